//! The client protocol as owned Rust types, and their encoding to / decoding from frame bodies.
//!
//! A `ClientRequests` frame body is a `RequestBatch` (schema `wire/schema/client.fbs`): many
//! [`Request`]s, each with its own id. A `ClientResponses` body is a [`ResponseBatch`]: one
//! [`Response`] per request (in any order, matched by id), or a frame-level error when the
//! whole request frame was refused. Decoding verifies the body with the flatbuffers verifier
//! (depth and table limits from [`Limits`]) before reading any field, then checks key, value and
//! batch limits. Keys and values in decoded messages are [`Bytes`] slices of the frame body
//! (no copy).

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, Vector, WIPOffset};

use crate::error::DecodeError;
use crate::frame::Limits;
use crate::generated::client as fb;
use crate::map::{ClusterMap, PartitionInfo, Replica, SlotRange};
use crate::slot::SLOT_COUNT;

// ---- requests ---------------------------------------------------------------------------------

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Consistency {
    /// The leader confirms its leadership (ReadIndex, Raft thesis §6.4) before reading.
    #[default]
    Linearizable,
    /// A follower asks the leader for a read index and reads once it has applied it
    /// (thesis §6.4.1); still linearizable.
    Follower,
    /// Served from the replica's local state; may lag.
    Stale,
}

/// One client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Client-chosen id, unique among the client's requests in flight on one connection.
    pub id: u64,
    /// Client session id (0: no session). With `seq`, makes retried writes exactly-once
    /// (Raft thesis §6.3).
    pub session: u64,
    /// Sequence number of this write in the session; a retry carries the same number.
    pub seq: u64,
    /// The cluster-map epoch the client routed with (0: unknown).
    pub map_epoch: u64,
    /// What to do.
    pub op: Op,
    /// The lowest sequence number of this session whose response the client does not have
    /// yet; every lower one has been answered, so the server may forget those results and
    /// refuse stray duplicates of them. 0 when the request carries no session.
    pub first_unacked: u64,
}

/// A request's operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read one key.
    Get {
        /// The key.
        key: Bytes,
        /// How fresh.
        consistency: Consistency,
    },
    /// Write one key.
    Put(Put),
    /// Delete one key.
    Delete {
        /// The key.
        key: Bytes,
        /// Return the deleted key-value.
        return_previous: bool,
    },
    /// A transaction within one partition.
    Txn(Txn),
    /// Scan one partition.
    Range(Range),
    /// The node's status.
    Status,
    /// The cluster map.
    ClusterMap,
    /// Move the leadership of a partition to another of its replicas (Raft thesis §3.10).
    /// Sent to the partition's leader; answered once `to_node` leads.
    TransferLeader {
        /// The partition (0: the meta group).
        partition: u64,
        /// The node that should lead it.
        to_node: u64,
    },
    /// The node's recent events after sequence number `after` (`Events` in
    /// `schema/client.fbs`).
    Events {
        /// Return events with a greater sequence number.
        after: u64,
        /// At most this many (0: the server's limit).
        limit: u32,
    },
    /// One chunk of a consistent copy of a partition, for backups (`Backup` in
    /// `schema/client.fbs`).
    Backup {
        /// The partition (not 0: the meta group is not backed up).
        partition: u64,
        /// 0: take a new copy at a linearizable point; else the copy's applied index.
        index: u64,
        /// Byte offset of the chunk in the copy.
        offset: u64,
    },
}

/// A write of one key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Put {
    /// The key.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
    /// Write only if the key does not exist.
    pub if_absent: bool,
    /// Return the previous key-value.
    pub return_previous: bool,
}

/// Comparison operator of a [`Compare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    /// `actual == operand`
    Equal,
    /// `actual != operand`
    NotEqual,
    /// `actual < operand`
    Less,
    /// `actual > operand`
    Greater,
}

/// What a [`Compare`] looks at, with its operand. A missing key has version, create and mod
/// revision 0 and `Exists(false)` holds; every `Value` comparison on a missing key is false
/// (whatever the operator, as in etcd), so test existence with `Exists`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The value (bytewise order).
    Value(Bytes),
    /// The number of writes since creation.
    Version(u64),
    /// The revision that created the key.
    CreateRevision(u64),
    /// The revision of the last write.
    ModRevision(u64),
    /// Whether the key exists (`Equal`: existence is as given; `NotEqual`: the opposite;
    /// `Less`/`Greater` compare false < true).
    Exists(bool),
}

/// One condition of a transaction: `target(key) op operand`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key.
    pub key: Bytes,
    /// The operator.
    pub op: CompareOp,
    /// The attribute and operand.
    pub target: CompareTarget,
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Read a key.
    Get {
        /// The key.
        key: Bytes,
    },
    /// Write a key.
    Put(Put),
    /// Delete a key.
    Delete {
        /// The key.
        key: Bytes,
        /// Return the deleted key-value.
        return_previous: bool,
    },
}

impl TxnOp {
    /// The key this operation touches.
    pub fn key(&self) -> &Bytes {
        match self {
            TxnOp::Get { key } | TxnOp::Delete { key, .. } => key,
            TxnOp::Put(p) => &p.key,
        }
    }
}

/// If every compare holds run `success`, else `failure`. Atomic when all keys are in one
/// partition; otherwise the server answers `CrossPartition`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub compares: Vec<Compare>,
    /// Run when they hold.
    pub success: Vec<TxnOp>,
    /// Run otherwise.
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// Every key the transaction touches.
    pub fn keys(&self) -> impl Iterator<Item = &Bytes> {
        self.compares
            .iter()
            .map(|c| &c.key)
            .chain(self.success.iter().chain(&self.failure).map(TxnOp::key))
    }
}

/// A scan of one partition's keys in `[start, end)`, in key order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Range {
    /// The partition to scan.
    pub partition: u64,
    /// First key (inclusive).
    pub start: Bytes,
    /// End key (exclusive); empty: no end.
    pub end: Bytes,
    /// At most this many keys; 0: the server's limit.
    pub limit: u32,
    /// Return keys and metadata without values.
    pub keys_only: bool,
    /// How fresh.
    pub consistency: Consistency,
    /// Continuation token: resume strictly after this key (the last key of the previous page).
    /// Empty: start at `start`.
    pub after: Bytes,
    /// Read the partition as it was at this revision; 0: now.
    pub revision: u64,
}

// ---- responses --------------------------------------------------------------------------------

/// Which replica answered, at which point of its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ResponseHeader {
    /// The partition that served the request.
    pub partition: u64,
    /// Its current term.
    pub term: u64,
    /// Its applied index when the answer was produced.
    pub applied_index: u64,
}

/// A key, its value and etcd-like metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    /// The key.
    pub key: Bytes,
    /// The value (empty for keys-only ranges).
    pub value: Bytes,
    /// Revision that created the key.
    pub create_revision: u64,
    /// Revision of the last write.
    pub mod_revision: u64,
    /// Writes since creation (1 after the first put).
    pub version: u64,
}

/// A typed error from the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    /// This replica does not lead the partition.
    #[error("not leader (leader hint: node {leader_node}, endpoint {leader_endpoint:?})")]
    NotLeader {
        /// The node believed to lead (0: unknown).
        leader_node: u64,
        /// Its client endpoint, if known.
        leader_endpoint: Option<String>,
    },
    /// The key's partition has no replica on this shard.
    #[error("wrong shard (server map epoch {epoch})")]
    WrongShard {
        /// The server's map epoch.
        epoch: u64,
    },
    /// The client's map is older than the server's.
    #[error("stale cluster map (server map epoch {epoch})")]
    StaleMap {
        /// The server's map epoch.
        epoch: u64,
    },
    /// No quorum or otherwise unable to serve for now.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The server gave up waiting (e.g. for commit).
    #[error("timed out")]
    Timeout,
    /// A key, value or frame over the limit.
    #[error("too large (limit {limit} bytes)")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The request is malformed.
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// Why.
        reason: String,
    },
    /// Backpressure: a queue is full; retry later.
    #[error("busy")]
    Busy,
    /// A transaction spans more than one partition.
    #[error("transaction spans partitions: {reason}")]
    CrossPartition {
        /// Which keys, in words.
        reason: String,
    },
    /// A bug or unexpected condition on the server.
    #[error("internal error: {reason}")]
    Internal {
        /// Why.
        reason: String,
    },
    /// The request may or may not have taken effect and the server cannot tell which: a
    /// retried write whose cached result was dropped from its session (so it was applied once,
    /// or never), or an applied write whose reply does not fit a frame. Never a definite
    /// failure: a write answered this way must not be re-issued as a new write before the
    /// caller has checked (read) what happened. The Rust client does not retry it and returns
    /// it as its outcome-unknown error, `ClientError::Timeout` (the same answer as a deadline
    /// that passed while a write was in flight).
    #[error("outcome unknown: {reason}")]
    OutcomeUnknown {
        /// What the server knows, in words.
        reason: String,
    },
    /// A read at a revision below the partition's compaction point: those versions are gone.
    #[error("required revision has been compacted (the oldest readable revision is {compacted})")]
    Compacted {
        /// The compaction point: the oldest readable revision.
        compacted: u64,
    },
    /// A read at a revision above the partition's current revision.
    #[error("required revision is a future revision (the current revision is {current})")]
    FutureRevision {
        /// The current revision.
        current: u64,
    },
}

/// Outcome of a Put.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutResult {
    /// False when `if_absent` was set and the key existed.
    pub written: bool,
    /// The previous key-value, when asked for and present.
    pub previous: Option<KeyValue>,
    /// Revision of this write (0 when not written).
    pub revision: u64,
}

/// Outcome of a Delete.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteResult {
    /// Whether the key existed and was deleted.
    pub deleted: bool,
    /// The deleted key-value, when asked for.
    pub previous: Option<KeyValue>,
    /// Revision of this delete (0 when nothing was deleted).
    pub revision: u64,
}

/// Outcome of one transaction operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResult {
    /// The key-value read, if any.
    Get(Option<KeyValue>),
    /// Whether written, and the previous key-value if asked.
    Put {
        /// Written.
        written: bool,
        /// Previous key-value.
        previous: Option<KeyValue>,
    },
    /// Whether deleted, and the deleted key-value if asked.
    Delete {
        /// Deleted.
        deleted: bool,
        /// Previous key-value.
        previous: Option<KeyValue>,
    },
}

/// Outcome of a Txn.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnResult {
    /// Whether the compares held (so `success` ran).
    pub succeeded: bool,
    /// One result per operation of the branch that ran.
    pub results: Vec<TxnOpResult>,
    /// Revision of the transaction's writes (0 if it wrote nothing).
    pub revision: u64,
}

/// Outcome of a Range.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResult {
    /// Key-values in key order.
    pub kvs: Vec<KeyValue>,
    /// More keys remain in this partition after the last one returned.
    pub more: bool,
}

/// One partition as a node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PartitionStatus {
    /// Partition id.
    pub partition: u64,
    /// Current term.
    pub term: u64,
    /// Known leader (0: unknown).
    pub leader_node: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Whether this node leads it.
    pub is_leader: bool,
}

/// A node's status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeStatus {
    /// Node id.
    pub node: u64,
    /// The shard that answered.
    pub shard: u32,
    /// The node's map epoch.
    pub map_epoch: u64,
    /// Its partitions.
    pub partitions: Vec<PartitionStatus>,
    /// The slowest WAL fdatasync of this shard in the last 60 to 120 s, microseconds (0: none).
    pub slowest_fsync_us: u64,
}

/// The result of a successful request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Get: the key-value, if the key exists.
    Get(Option<KeyValue>),
    /// Put.
    Put(PutResult),
    /// Delete.
    Delete(DeleteResult),
    /// Txn.
    Txn(TxnResult),
    /// Range.
    Range(RangeResult),
    /// Status.
    Status(NodeStatus),
    /// The cluster map.
    ClusterMap(ClusterMap),
    /// A completed leadership transfer.
    TransferLeader(TransferLeaderResult),
    /// One chunk of a partition's copy.
    Backup(BackupChunk),
    /// A node's events.
    Events(EventsResult),
}

/// Something that happened on a node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// Per node, from 1, without gaps.
    pub seq: u64,
    /// Wall-clock time on the node, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The node.
    pub node: u64,
    /// The shard.
    pub shard: u32,
    /// The partition (0: none, or the meta group).
    pub partition: u64,
    /// What happened, e.g. `leader_elected`.
    pub kind: String,
    /// Details for people.
    pub detail: String,
}

/// A node's answer to `Op::Events`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventsResult {
    /// Oldest first.
    pub events: Vec<Event>,
    /// The oldest sequence number the node still holds.
    pub oldest: u64,
    /// The newest it assigned (0: none).
    pub newest: u64,
    /// Differs on every start of the node (0: a server from before this field); sequence
    /// numbers are per boot.
    pub boot_id: u64,
}

/// One chunk of a partition's copy: bytes `offset..offset + data.len()` of a snapshot file
/// (engine's `snapshot` format) of `total_bytes`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackupChunk {
    /// The partition.
    pub partition: u64,
    /// The copy's applied index.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The partition's revision in the copy.
    pub revision: u64,
    /// The copy's length.
    pub total_bytes: u64,
    /// Where `data` starts.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
}

/// A completed leadership transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransferLeaderResult {
    /// The partition.
    pub partition: u64,
    /// The node that leads it now.
    pub leader_node: u64,
    /// Its term.
    pub term: u64,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The id of the request answered.
    pub id: u64,
    /// Which replica answered.
    pub header: ResponseHeader,
    /// The result or a typed error.
    pub outcome: Result<Outcome, ServerError>,
}

/// The body of a `ClientResponses` frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseBatch {
    /// Set when the whole request frame (same frame id) was refused; every request in it
    /// failed with this error.
    pub frame_error: Option<ServerError>,
    /// Answers, matched to requests by id.
    pub responses: Vec<Response>,
}

// ---- limits ------------------------------------------------------------------------------------

fn check_key(key: &[u8], limits: &Limits) -> Result<(), DecodeError> {
    if key.len() > limits.key_bytes_max {
        return Err(DecodeError::KeyTooLarge {
            len: key.len(),
            limit: limits.key_bytes_max,
        });
    }
    Ok(())
}

fn check_value(value: &[u8], limits: &Limits) -> Result<(), DecodeError> {
    if value.len() > limits.value_bytes_max {
        return Err(DecodeError::ValueTooLarge {
            len: value.len(),
            limit: limits.value_bytes_max,
        });
    }
    Ok(())
}

fn check_items(len: usize, limits: &Limits) -> Result<(), DecodeError> {
    if len > limits.batch_items_max {
        return Err(DecodeError::TooManyItems {
            len,
            limit: limits.batch_items_max,
        });
    }
    Ok(())
}

impl Op {
    /// Checks keys and values against `limits` (the client calls this before sending; the
    /// decoder calls it on every received request).
    pub fn check(&self, limits: &Limits) -> Result<(), DecodeError> {
        match self {
            Op::Get { key, .. } | Op::Delete { key, .. } => check_key(key, limits),
            Op::Put(p) => check_key(&p.key, limits).and_then(|()| check_value(&p.value, limits)),
            Op::Txn(t) => {
                check_items(t.compares.len() + t.success.len() + t.failure.len(), limits)?;
                for c in &t.compares {
                    check_key(&c.key, limits)?;
                    if let CompareTarget::Value(v) = &c.target {
                        check_value(v, limits)?;
                    }
                }
                for op in t.success.iter().chain(&t.failure) {
                    check_key(op.key(), limits)?;
                    if let TxnOp::Put(p) = op {
                        check_value(&p.value, limits)?;
                    }
                }
                Ok(())
            }
            Op::Range(r) => {
                check_key(&r.start, limits)?;
                check_key(&r.end, limits)?;
                check_key(&r.after, limits)
            }
            Op::Status
            | Op::ClusterMap
            | Op::TransferLeader { .. }
            | Op::Backup { .. }
            | Op::Events { .. } => Ok(()),
        }
    }

    /// The key that decides where the request goes (Txn: its first key), if any.
    pub fn routing_key(&self) -> Option<&Bytes> {
        match self {
            Op::Get { key, .. } | Op::Delete { key, .. } => Some(key),
            Op::Put(p) => Some(&p.key),
            Op::Txn(t) => t.keys().next(),
            Op::Range(_)
            | Op::Status
            | Op::ClusterMap
            | Op::TransferLeader { .. }
            | Op::Backup { .. }
            | Op::Events { .. } => None,
        }
    }

    /// Whether the server runs the operation through the partition's Raft log: puts, deletes
    /// and every transaction, read-only ones included (a transaction's reads are atomic with
    /// its compares only there). Such a request carries a session sequence number.
    pub fn is_logged(&self) -> bool {
        match self {
            Op::Put(_) | Op::Delete { .. } | Op::Txn(_) => true,
            Op::Get { .. }
            | Op::Range(_)
            | Op::Status
            | Op::ClusterMap
            | Op::TransferLeader { .. }
            | Op::Backup { .. }
            | Op::Events { .. } => false,
        }
    }

    /// Whether the operation may change state.
    pub fn is_write(&self) -> bool {
        match self {
            Op::Put(_) | Op::Delete { .. } => true,
            Op::Txn(t) => t
                .success
                .iter()
                .chain(&t.failure)
                .any(|o| !matches!(o, TxnOp::Get { .. })),
            Op::Get { .. }
            | Op::Range(_)
            | Op::Status
            | Op::ClusterMap
            | Op::TransferLeader { .. }
            | Op::Backup { .. }
            | Op::Events { .. } => false,
        }
    }
}

// ---- encoding ---------------------------------------------------------------------------------

/// Encodes message bodies, reusing one flatbuffers builder (and its memory) across calls.
pub struct BodyEncoder {
    pub(crate) fbb: FlatBufferBuilder<'static>,
}

impl Default for BodyEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for BodyEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyEncoder").finish_non_exhaustive()
    }
}

type Fbb = FlatBufferBuilder<'static>;
type Bv = WIPOffset<Vector<'static, u8>>;

fn bv(fbb: &mut Fbb, b: &[u8]) -> Bv {
    fbb.create_vector(b)
}

fn opt_bv(fbb: &mut Fbb, b: &[u8]) -> Option<Bv> {
    if b.is_empty() {
        None
    } else {
        Some(bv(fbb, b))
    }
}

fn fb_consistency(c: Consistency) -> fb::Consistency {
    match c {
        Consistency::Linearizable => fb::Consistency::Linearizable,
        Consistency::Follower => fb::Consistency::Follower,
        Consistency::Stale => fb::Consistency::Stale,
    }
}

fn enc_put(fbb: &mut Fbb, p: &Put) -> WIPOffset<fb::Put<'static>> {
    let key = Some(bv(fbb, &p.key));
    let value = Some(bv(fbb, &p.value));
    fb::Put::create(
        fbb,
        &fb::PutArgs {
            key,
            value,
            if_absent: p.if_absent,
            return_previous: p.return_previous,
        },
    )
}

fn enc_txn_op(fbb: &mut Fbb, op: &TxnOp) -> WIPOffset<fb::TxnOp<'static>> {
    let (kind, key, value, if_absent, return_previous) = match op {
        TxnOp::Get { key } => (fb::TxnOpKind::Get, key, None, false, false),
        TxnOp::Put(p) => (
            fb::TxnOpKind::Put,
            &p.key,
            Some(&p.value),
            p.if_absent,
            p.return_previous,
        ),
        TxnOp::Delete {
            key,
            return_previous,
        } => (fb::TxnOpKind::Delete, key, None, false, *return_previous),
    };
    let key = Some(bv(fbb, key));
    let value = value.map(|v| bv(fbb, v));
    fb::TxnOp::create(
        fbb,
        &fb::TxnOpArgs {
            kind,
            key,
            value,
            if_absent,
            return_previous,
        },
    )
}

fn enc_op(fbb: &mut Fbb, op: &Op) -> (fb::Op, WIPOffset<flatbuffers::UnionWIPOffset>) {
    match op {
        Op::Get { key, consistency } => {
            let key = Some(bv(fbb, key));
            let t = fb::Get::create(
                fbb,
                &fb::GetArgs {
                    key,
                    consistency: fb_consistency(*consistency),
                },
            );
            (fb::Op::Get, t.as_union_value())
        }
        Op::Put(p) => (fb::Op::Put, enc_put(fbb, p).as_union_value()),
        Op::Delete {
            key,
            return_previous,
        } => {
            let key = Some(bv(fbb, key));
            let t = fb::Delete::create(
                fbb,
                &fb::DeleteArgs {
                    key,
                    return_previous: *return_previous,
                },
            );
            (fb::Op::Delete, t.as_union_value())
        }
        Op::Txn(t) => {
            let compares: Vec<_> = t
                .compares
                .iter()
                .map(|c| {
                    let key = Some(bv(fbb, &c.key));
                    let (target, value, number) = match &c.target {
                        CompareTarget::Value(v) => (fb::CompareTarget::Value, Some(bv(fbb, v)), 0),
                        CompareTarget::Version(n) => (fb::CompareTarget::Version, None, *n),
                        CompareTarget::CreateRevision(n) => {
                            (fb::CompareTarget::CreateRevision, None, *n)
                        }
                        CompareTarget::ModRevision(n) => (fb::CompareTarget::ModRevision, None, *n),
                        CompareTarget::Exists(e) => {
                            (fb::CompareTarget::Exists, None, u64::from(*e))
                        }
                    };
                    let op = match c.op {
                        CompareOp::Equal => fb::CompareOp::Equal,
                        CompareOp::NotEqual => fb::CompareOp::NotEqual,
                        CompareOp::Less => fb::CompareOp::Less,
                        CompareOp::Greater => fb::CompareOp::Greater,
                    };
                    fb::Compare::create(
                        fbb,
                        &fb::CompareArgs {
                            key,
                            target,
                            op,
                            value,
                            number,
                        },
                    )
                })
                .collect();
            let compares = Some(fbb.create_vector(&compares));
            let success: Vec<_> = t.success.iter().map(|o| enc_txn_op(fbb, o)).collect();
            let success = Some(fbb.create_vector(&success));
            let failure: Vec<_> = t.failure.iter().map(|o| enc_txn_op(fbb, o)).collect();
            let failure = Some(fbb.create_vector(&failure));
            let t = fb::Txn::create(
                fbb,
                &fb::TxnArgs {
                    compares,
                    success,
                    failure,
                },
            );
            (fb::Op::Txn, t.as_union_value())
        }
        Op::Range(r) => {
            let start = Some(bv(fbb, &r.start));
            let end = opt_bv(fbb, &r.end);
            let after = opt_bv(fbb, &r.after);
            let t = fb::Range::create(
                fbb,
                &fb::RangeArgs {
                    partition: r.partition,
                    start,
                    end,
                    limit: r.limit,
                    keys_only: r.keys_only,
                    consistency: fb_consistency(r.consistency),
                    after,
                    revision: r.revision,
                },
            );
            (fb::Op::Range, t.as_union_value())
        }
        Op::Status => (
            fb::Op::Status,
            fb::Status::create(fbb, &fb::StatusArgs {}).as_union_value(),
        ),
        Op::ClusterMap => (
            fb::Op::GetClusterMap,
            fb::GetClusterMap::create(fbb, &fb::GetClusterMapArgs {}).as_union_value(),
        ),
        Op::TransferLeader { partition, to_node } => (
            fb::Op::TransferLeader,
            fb::TransferLeader::create(
                fbb,
                &fb::TransferLeaderArgs {
                    partition: *partition,
                    to_node: *to_node,
                },
            )
            .as_union_value(),
        ),
        Op::Events { after, limit } => (
            fb::Op::Events,
            fb::Events::create(
                fbb,
                &fb::EventsArgs {
                    after: *after,
                    limit: *limit,
                },
            )
            .as_union_value(),
        ),
        Op::Backup {
            partition,
            index,
            offset,
        } => (
            fb::Op::Backup,
            fb::Backup::create(
                fbb,
                &fb::BackupArgs {
                    partition: *partition,
                    index: *index,
                    offset: *offset,
                },
            )
            .as_union_value(),
        ),
    }
}

fn enc_kv(fbb: &mut Fbb, kv: &KeyValue) -> WIPOffset<fb::KeyValue<'static>> {
    let key = Some(bv(fbb, &kv.key));
    let value = opt_bv(fbb, &kv.value);
    fb::KeyValue::create(
        fbb,
        &fb::KeyValueArgs {
            key,
            value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
        },
    )
}

fn enc_opt_kv(fbb: &mut Fbb, kv: &Option<KeyValue>) -> Option<WIPOffset<fb::KeyValue<'static>>> {
    kv.as_ref().map(|kv| enc_kv(fbb, kv))
}

fn enc_error(fbb: &mut Fbb, e: &ServerError) -> WIPOffset<fb::ErrorInfo<'static>> {
    let mut args = fb::ErrorInfoArgs::default();
    let reason = |fbb: &mut Fbb, s: &str| Some(fbb.create_string(s));
    match e {
        ServerError::NotLeader {
            leader_node,
            leader_endpoint,
        } => {
            args.code = fb::ErrorCode::NotLeader;
            args.leader_node = *leader_node;
            args.leader_endpoint = leader_endpoint.as_deref().map(|s| fbb.create_string(s));
        }
        ServerError::WrongShard { epoch } => {
            args.code = fb::ErrorCode::WrongShard;
            args.epoch = *epoch;
        }
        ServerError::StaleMap { epoch } => {
            args.code = fb::ErrorCode::StaleMap;
            args.epoch = *epoch;
        }
        ServerError::Unavailable { reason: r } => {
            args.code = fb::ErrorCode::Unavailable;
            args.reason = reason(fbb, r);
        }
        ServerError::Timeout => args.code = fb::ErrorCode::Timeout,
        ServerError::TooLarge { limit } => {
            args.code = fb::ErrorCode::TooLarge;
            args.limit = *limit;
        }
        ServerError::InvalidArgument { reason: r } => {
            args.code = fb::ErrorCode::InvalidArgument;
            args.reason = reason(fbb, r);
        }
        ServerError::Busy => args.code = fb::ErrorCode::Busy,
        ServerError::CrossPartition { reason: r } => {
            args.code = fb::ErrorCode::CrossPartition;
            args.reason = reason(fbb, r);
        }
        ServerError::Internal { reason: r } => {
            args.code = fb::ErrorCode::Internal;
            args.reason = reason(fbb, r);
        }
        ServerError::OutcomeUnknown { reason: r } => {
            args.code = fb::ErrorCode::OutcomeUnknown;
            args.reason = reason(fbb, r);
        }
        ServerError::Compacted { compacted } => {
            args.code = fb::ErrorCode::Compacted;
            args.revision = *compacted;
        }
        ServerError::FutureRevision { current } => {
            args.code = fb::ErrorCode::FutureRevision;
            args.revision = *current;
        }
    }
    fb::ErrorInfo::create(fbb, &args)
}

fn enc_map(fbb: &mut Fbb, m: &ClusterMap) -> WIPOffset<fb::ClusterMap<'static>> {
    let ranges: Vec<fb::SlotRange> = m
        .ranges
        .iter()
        .map(|r| fb::SlotRange::new(r.start, r.end, r.partition))
        .collect();
    let ranges = Some(fbb.create_vector(&ranges));
    let partitions: Vec<_> = m
        .partitions
        .iter()
        .map(|p| {
            let replicas: Vec<_> = p
                .replicas
                .iter()
                .map(|r| {
                    let endpoint = Some(fbb.create_string(&r.endpoint));
                    fb::Replica::create(
                        fbb,
                        &fb::ReplicaArgs {
                            node: r.node,
                            shard: r.shard,
                            endpoint,
                        },
                    )
                })
                .collect();
            let replicas = Some(fbb.create_vector(&replicas));
            fb::PartitionInfo::create(
                fbb,
                &fb::PartitionInfoArgs {
                    partition: p.id,
                    replicas,
                    leader_node: p.leader_node,
                },
            )
        })
        .collect();
    let partitions = Some(fbb.create_vector(&partitions));
    fb::ClusterMap::create(
        fbb,
        &fb::ClusterMapArgs {
            epoch: m.epoch,
            slot_count: SLOT_COUNT,
            ranges,
            partitions,
        },
    )
}

fn enc_outcome(
    fbb: &mut Fbb,
    o: &Outcome,
) -> (fb::Outcome, WIPOffset<flatbuffers::UnionWIPOffset>) {
    match o {
        Outcome::Get(kv) => {
            let kv = enc_opt_kv(fbb, kv);
            (
                fb::Outcome::GetResult,
                fb::GetResult::create(fbb, &fb::GetResultArgs { kv }).as_union_value(),
            )
        }
        Outcome::Put(p) => {
            let previous = enc_opt_kv(fbb, &p.previous);
            let t = fb::PutResult::create(
                fbb,
                &fb::PutResultArgs {
                    written: p.written,
                    previous,
                    revision: p.revision,
                },
            );
            (fb::Outcome::PutResult, t.as_union_value())
        }
        Outcome::Delete(d) => {
            let previous = enc_opt_kv(fbb, &d.previous);
            let t = fb::DeleteResult::create(
                fbb,
                &fb::DeleteResultArgs {
                    deleted: d.deleted,
                    previous,
                    revision: d.revision,
                },
            );
            (fb::Outcome::DeleteResult, t.as_union_value())
        }
        Outcome::Txn(t) => {
            let results: Vec<_> = t
                .results
                .iter()
                .map(|r| {
                    let (kind, kv, done) = match r {
                        TxnOpResult::Get(kv) => (fb::TxnOpKind::Get, kv, false),
                        TxnOpResult::Put { written, previous } => {
                            (fb::TxnOpKind::Put, previous, *written)
                        }
                        TxnOpResult::Delete { deleted, previous } => {
                            (fb::TxnOpKind::Delete, previous, *deleted)
                        }
                    };
                    let kv = enc_opt_kv(fbb, kv);
                    fb::TxnOpResult::create(fbb, &fb::TxnOpResultArgs { kind, kv, done })
                })
                .collect();
            let results = Some(fbb.create_vector(&results));
            let r = fb::TxnResult::create(
                fbb,
                &fb::TxnResultArgs {
                    succeeded: t.succeeded,
                    results,
                    revision: t.revision,
                },
            );
            (fb::Outcome::TxnResult, r.as_union_value())
        }
        Outcome::Range(r) => {
            let kvs: Vec<_> = r.kvs.iter().map(|kv| enc_kv(fbb, kv)).collect();
            let kvs = Some(fbb.create_vector(&kvs));
            let t = fb::RangeResult::create(fbb, &fb::RangeResultArgs { kvs, more: r.more });
            (fb::Outcome::RangeResult, t.as_union_value())
        }
        Outcome::Status(s) => {
            let parts: Vec<_> = s
                .partitions
                .iter()
                .map(|p| {
                    fb::PartitionStatus::create(
                        fbb,
                        &fb::PartitionStatusArgs {
                            partition: p.partition,
                            term: p.term,
                            leader_node: p.leader_node,
                            commit_index: p.commit_index,
                            applied_index: p.applied_index,
                            is_leader: p.is_leader,
                        },
                    )
                })
                .collect();
            let partitions = Some(fbb.create_vector(&parts));
            let t = fb::StatusResult::create(
                fbb,
                &fb::StatusResultArgs {
                    node: s.node,
                    shard: s.shard,
                    map_epoch: s.map_epoch,
                    partitions,
                    slowest_fsync_us: s.slowest_fsync_us,
                },
            );
            (fb::Outcome::StatusResult, t.as_union_value())
        }
        Outcome::ClusterMap(m) => {
            let map = Some(enc_map(fbb, m));
            let t = fb::ClusterMapResult::create(fbb, &fb::ClusterMapResultArgs { map });
            (fb::Outcome::ClusterMapResult, t.as_union_value())
        }
        Outcome::TransferLeader(t) => {
            let t = fb::TransferLeaderResult::create(
                fbb,
                &fb::TransferLeaderResultArgs {
                    partition: t.partition,
                    leader_node: t.leader_node,
                    term: t.term,
                },
            );
            (fb::Outcome::TransferLeaderResult, t.as_union_value())
        }
        Outcome::Backup(b) => {
            let data = opt_bv(fbb, &b.data);
            let t = fb::BackupResult::create(
                fbb,
                &fb::BackupResultArgs {
                    partition: b.partition,
                    index: b.index,
                    term: b.term,
                    revision: b.revision,
                    total_bytes: b.total_bytes,
                    offset: b.offset,
                    data,
                },
            );
            (fb::Outcome::BackupResult, t.as_union_value())
        }
        Outcome::Events(r) => {
            let events: Vec<_> = r
                .events
                .iter()
                .map(|e| {
                    let kind = Some(fbb.create_string(&e.kind));
                    let detail = Some(fbb.create_string(&e.detail));
                    fb::Event::create(
                        fbb,
                        &fb::EventArgs {
                            seq: e.seq,
                            unix_ms: e.unix_ms,
                            node: e.node,
                            shard: e.shard,
                            partition: e.partition,
                            kind,
                            detail,
                        },
                    )
                })
                .collect();
            let events = Some(fbb.create_vector(&events));
            let t = fb::EventsResult::create(
                fbb,
                &fb::EventsResultArgs {
                    events,
                    oldest: r.oldest,
                    newest: r.newest,
                    boot_id: r.boot_id,
                },
            );
            (fb::Outcome::EventsResult, t.as_union_value())
        }
    }
}

impl BodyEncoder {
    /// A new encoder.
    pub fn new() -> Self {
        Self {
            fbb: FlatBufferBuilder::with_capacity(1024),
        }
    }

    /// Encodes a `RequestBatch` body. The slice is valid until the next call.
    pub fn requests(&mut self, requests: &[Request]) -> &[u8] {
        let fbb = &mut self.fbb;
        fbb.reset();
        let reqs: Vec<_> = requests
            .iter()
            .map(|r| {
                let (op_type, op) = enc_op(fbb, &r.op);
                fb::Request::create(
                    fbb,
                    &fb::RequestArgs {
                        id: r.id,
                        session: r.session,
                        seq: r.seq,
                        map_epoch: r.map_epoch,
                        first_unacked: r.first_unacked,
                        op_type,
                        op: Some(op),
                    },
                )
            })
            .collect();
        let requests = Some(fbb.create_vector(&reqs));
        let root = fb::RequestBatch::create(fbb, &fb::RequestBatchArgs { requests });
        fbb.finish_minimal(root);
        fbb.finished_data()
    }

    /// Encodes a `ResponseBatch` body. The slice is valid until the next call.
    pub fn responses(&mut self, batch: &ResponseBatch) -> &[u8] {
        let fbb = &mut self.fbb;
        fbb.reset();
        let frame_error = batch.frame_error.as_ref().map(|e| enc_error(fbb, e));
        let resps: Vec<_> = batch
            .responses
            .iter()
            .map(|r| {
                let header = fb::ResponseHeader::new(
                    r.header.partition,
                    r.header.term,
                    r.header.applied_index,
                );
                let (error, result_type, result) = match &r.outcome {
                    Ok(o) => {
                        let (t, v) = enc_outcome(fbb, o);
                        (None, t, Some(v))
                    }
                    Err(e) => (Some(enc_error(fbb, e)), fb::Outcome::NONE, None),
                };
                fb::Response::create(
                    fbb,
                    &fb::ResponseArgs {
                        id: r.id,
                        header: Some(&header),
                        error,
                        result_type,
                        result,
                    },
                )
            })
            .collect();
        let responses = Some(fbb.create_vector(&resps));
        let root = fb::ResponseBatch::create(
            fbb,
            &fb::ResponseBatchArgs {
                frame_error,
                responses,
            },
        );
        fbb.finish_minimal(root);
        fbb.finished_data()
    }
}

// ---- decoding ---------------------------------------------------------------------------------

/// Zero-copy access to byte vectors of one body.
struct Ctx<'b> {
    body: &'b Bytes,
    limits: &'b Limits,
}

impl Ctx<'_> {
    fn bytes(&self, v: Option<Vector<'_, u8>>) -> Bytes {
        match v {
            Some(v) if !v.is_empty() => self.body.slice_ref(v.bytes()),
            _ => Bytes::new(),
        }
    }

    fn key(&self, v: Option<Vector<'_, u8>>) -> Result<Bytes, DecodeError> {
        let b = self.bytes(v);
        check_key(&b, self.limits)?;
        Ok(b)
    }

    fn value(&self, v: Option<Vector<'_, u8>>) -> Result<Bytes, DecodeError> {
        let b = self.bytes(v);
        check_value(&b, self.limits)?;
        Ok(b)
    }

    fn items<T>(&self, v: &Option<Vector<'_, T>>) -> Result<usize, DecodeError> {
        let len = v.as_ref().map_or(0, |v| v.len());
        check_items(len, self.limits)?;
        Ok(len)
    }
}

fn dec_consistency(c: fb::Consistency) -> Result<Consistency, DecodeError> {
    match c {
        fb::Consistency::Linearizable => Ok(Consistency::Linearizable),
        fb::Consistency::Follower => Ok(Consistency::Follower),
        fb::Consistency::Stale => Ok(Consistency::Stale),
        other => Err(DecodeError::UnknownEnum {
            field: "consistency",
            value: other.0,
        }),
    }
}

fn dec_txn_op(cx: &Ctx<'_>, t: fb::TxnOp<'_>) -> Result<TxnOp, DecodeError> {
    let key = cx.key(t.key())?;
    Ok(match t.kind() {
        fb::TxnOpKind::Get => TxnOp::Get { key },
        fb::TxnOpKind::Put => TxnOp::Put(Put {
            key,
            value: cx.value(t.value())?,
            if_absent: t.if_absent(),
            return_previous: t.return_previous(),
        }),
        fb::TxnOpKind::Delete => TxnOp::Delete {
            key,
            return_previous: t.return_previous(),
        },
        other => {
            return Err(DecodeError::UnknownEnum {
                field: "TxnOp.kind",
                value: other.0,
            })
        }
    })
}

fn dec_txn_ops(
    cx: &Ctx<'_>,
    v: Option<Vector<'_, ForwardsUOffset<fb::TxnOp<'_>>>>,
) -> Result<Vec<TxnOp>, DecodeError> {
    let mut out = Vec::with_capacity(cx.items(&v)?);
    for t in v.iter().flatten() {
        out.push(dec_txn_op(cx, t)?);
    }
    Ok(out)
}

fn dec_request(cx: &Ctx<'_>, r: fb::Request<'_>) -> Result<Request, DecodeError> {
    let op = match r.op_type() {
        fb::Op::Get => {
            let t = r
                .op_as_get()
                .ok_or(DecodeError::MissingField("Request.op"))?;
            Op::Get {
                key: cx.key(t.key())?,
                consistency: dec_consistency(t.consistency())?,
            }
        }
        fb::Op::Put => {
            let t = r
                .op_as_put()
                .ok_or(DecodeError::MissingField("Request.op"))?;
            Op::Put(Put {
                key: cx.key(t.key())?,
                value: cx.value(t.value())?,
                if_absent: t.if_absent(),
                return_previous: t.return_previous(),
            })
        }
        fb::Op::Delete => {
            let t = r
                .op_as_delete()
                .ok_or(DecodeError::MissingField("Request.op"))?;
            Op::Delete {
                key: cx.key(t.key())?,
                return_previous: t.return_previous(),
            }
        }
        fb::Op::Txn => {
            let t = r
                .op_as_txn()
                .ok_or(DecodeError::MissingField("Request.op"))?;
            let cv = t.compares();
            let mut compares = Vec::with_capacity(cx.items(&cv)?);
            for c in cv.iter().flatten() {
                let op = match c.op() {
                    fb::CompareOp::Equal => CompareOp::Equal,
                    fb::CompareOp::NotEqual => CompareOp::NotEqual,
                    fb::CompareOp::Less => CompareOp::Less,
                    fb::CompareOp::Greater => CompareOp::Greater,
                    other => {
                        return Err(DecodeError::UnknownEnum {
                            field: "Compare.op",
                            value: other.0,
                        })
                    }
                };
                let target = match c.target() {
                    fb::CompareTarget::Value => CompareTarget::Value(cx.value(c.value())?),
                    fb::CompareTarget::Version => CompareTarget::Version(c.number()),
                    fb::CompareTarget::CreateRevision => CompareTarget::CreateRevision(c.number()),
                    fb::CompareTarget::ModRevision => CompareTarget::ModRevision(c.number()),
                    fb::CompareTarget::Exists => match c.number() {
                        0 => CompareTarget::Exists(false),
                        1 => CompareTarget::Exists(true),
                        n => {
                            return Err(DecodeError::UnknownEnum {
                                field: "Compare.number (Exists)",
                                value: n.min(255) as u8,
                            })
                        }
                    },
                    other => {
                        return Err(DecodeError::UnknownEnum {
                            field: "Compare.target",
                            value: other.0,
                        })
                    }
                };
                compares.push(Compare {
                    key: cx.key(c.key())?,
                    op,
                    target,
                });
            }
            let txn = Txn {
                compares,
                success: dec_txn_ops(cx, t.success())?,
                failure: dec_txn_ops(cx, t.failure())?,
            };
            check_items(
                txn.compares.len() + txn.success.len() + txn.failure.len(),
                cx.limits,
            )?;
            Op::Txn(txn)
        }
        fb::Op::Range => {
            let t = r
                .op_as_range()
                .ok_or(DecodeError::MissingField("Request.op"))?;
            Op::Range(Range {
                partition: t.partition(),
                start: cx.key(t.start())?,
                end: cx.key(t.end())?,
                limit: t.limit(),
                keys_only: t.keys_only(),
                consistency: dec_consistency(t.consistency())?,
                after: cx.key(t.after())?,
                revision: t.revision(),
            })
        }
        fb::Op::Status => {
            r.op_as_status()
                .ok_or(DecodeError::MissingField("Request.op"))?;
            Op::Status
        }
        fb::Op::GetClusterMap => {
            r.op_as_get_cluster_map()
                .ok_or(DecodeError::MissingField("Request.op"))?;
            Op::ClusterMap
        }
        fb::Op::TransferLeader => {
            let t = r
                .op_as_transfer_leader()
                .ok_or(DecodeError::MissingField("Request.op"))?;
            Op::TransferLeader {
                partition: t.partition(),
                to_node: t.to_node(),
            }
        }
        fb::Op::Events => {
            let t = r
                .op_as_events()
                .ok_or(DecodeError::MissingField("Request.op"))?;
            Op::Events {
                after: t.after(),
                limit: t.limit(),
            }
        }
        fb::Op::Backup => {
            let t = r
                .op_as_backup()
                .ok_or(DecodeError::MissingField("Request.op"))?;
            Op::Backup {
                partition: t.partition(),
                index: t.index(),
                offset: t.offset(),
            }
        }
        fb::Op::NONE => return Err(DecodeError::MissingField("Request.op")),
        other => {
            return Err(DecodeError::UnknownEnum {
                field: "Request.op_type",
                value: other.0,
            })
        }
    };
    Ok(Request {
        id: r.id(),
        session: r.session(),
        seq: r.seq(),
        map_epoch: r.map_epoch(),
        op,
        first_unacked: r.first_unacked(),
    })
}

/// Decodes a `ClientRequests` frame body: verifies it, then checks every limit.
pub fn decode_requests(body: &Bytes, limits: &Limits) -> Result<Vec<Request>, DecodeError> {
    decode_requests_inner(body, limits).map_err(|e| e.logged("RequestBatch"))
}

fn decode_requests_inner(body: &Bytes, limits: &Limits) -> Result<Vec<Request>, DecodeError> {
    let batch = flatbuffers::root_with_opts::<fb::RequestBatch>(&limits.verifier_options(), body)?;
    let cx = Ctx { body, limits };
    let v = batch.requests();
    let mut out = Vec::with_capacity(cx.items(&v)?);
    for r in v.iter().flatten() {
        out.push(dec_request(&cx, r)?);
    }
    Ok(out)
}

fn dec_kv(cx: &Ctx<'_>, kv: fb::KeyValue<'_>) -> Result<KeyValue, DecodeError> {
    Ok(KeyValue {
        key: cx.key(kv.key())?,
        value: cx.value(kv.value())?,
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
    })
}

fn dec_opt_kv(cx: &Ctx<'_>, kv: Option<fb::KeyValue<'_>>) -> Result<Option<KeyValue>, DecodeError> {
    kv.map(|kv| dec_kv(cx, kv)).transpose()
}

fn dec_error(e: fb::ErrorInfo<'_>) -> Result<ServerError, DecodeError> {
    let reason = || e.reason().unwrap_or_default().to_owned();
    Ok(match e.code() {
        fb::ErrorCode::NotLeader => ServerError::NotLeader {
            leader_node: e.leader_node(),
            leader_endpoint: e.leader_endpoint().map(str::to_owned),
        },
        fb::ErrorCode::WrongShard => ServerError::WrongShard { epoch: e.epoch() },
        fb::ErrorCode::StaleMap => ServerError::StaleMap { epoch: e.epoch() },
        fb::ErrorCode::Unavailable => ServerError::Unavailable { reason: reason() },
        fb::ErrorCode::Timeout => ServerError::Timeout,
        fb::ErrorCode::TooLarge => ServerError::TooLarge { limit: e.limit() },
        fb::ErrorCode::InvalidArgument => ServerError::InvalidArgument { reason: reason() },
        fb::ErrorCode::Busy => ServerError::Busy,
        fb::ErrorCode::CrossPartition => ServerError::CrossPartition { reason: reason() },
        fb::ErrorCode::Internal => ServerError::Internal { reason: reason() },
        fb::ErrorCode::OutcomeUnknown => ServerError::OutcomeUnknown { reason: reason() },
        fb::ErrorCode::Compacted => ServerError::Compacted {
            compacted: e.revision(),
        },
        fb::ErrorCode::FutureRevision => ServerError::FutureRevision {
            current: e.revision(),
        },
        other => {
            return Err(DecodeError::UnknownEnum {
                field: "ErrorInfo.code",
                value: other.0,
            })
        }
    })
}

fn dec_map(cx: &Ctx<'_>, m: fb::ClusterMap<'_>) -> Result<ClusterMap, DecodeError> {
    if m.slot_count() != SLOT_COUNT {
        return Err(DecodeError::InvalidMap(crate::map::MapError(format!(
            "slot count {} (this build uses {SLOT_COUNT})",
            m.slot_count()
        ))));
    }
    let rv = m.ranges();
    cx.items(&rv)?;
    let ranges = rv
        .iter()
        .flatten()
        .map(|r| SlotRange {
            start: r.start(),
            end: r.end(),
            partition: r.partition(),
        })
        .collect();
    let pv = m.partitions();
    let mut partitions = Vec::with_capacity(cx.items(&pv)?);
    for p in pv.iter().flatten() {
        let rv = p.replicas();
        let mut replicas = Vec::with_capacity(cx.items(&rv)?);
        for r in rv.iter().flatten() {
            replicas.push(Replica {
                node: r.node(),
                shard: r.shard(),
                endpoint: r.endpoint().unwrap_or_default().to_owned(),
            });
        }
        partitions.push(PartitionInfo {
            id: p.partition(),
            replicas,
            leader_node: p.leader_node(),
        });
    }
    let map = ClusterMap {
        epoch: m.epoch(),
        ranges,
        partitions,
    };
    map.validate()?;
    Ok(map)
}

fn dec_outcome(cx: &Ctx<'_>, r: &fb::Response<'_>) -> Result<Outcome, DecodeError> {
    const MISSING: DecodeError = DecodeError::MissingField("Response.result");
    Ok(match r.result_type() {
        fb::Outcome::GetResult => Outcome::Get(dec_opt_kv(
            cx,
            r.result_as_get_result().ok_or(MISSING)?.kv(),
        )?),
        fb::Outcome::PutResult => {
            let t = r.result_as_put_result().ok_or(MISSING)?;
            Outcome::Put(PutResult {
                written: t.written(),
                previous: dec_opt_kv(cx, t.previous())?,
                revision: t.revision(),
            })
        }
        fb::Outcome::DeleteResult => {
            let t = r.result_as_delete_result().ok_or(MISSING)?;
            Outcome::Delete(DeleteResult {
                deleted: t.deleted(),
                previous: dec_opt_kv(cx, t.previous())?,
                revision: t.revision(),
            })
        }
        fb::Outcome::TxnResult => {
            let t = r.result_as_txn_result().ok_or(MISSING)?;
            let v = t.results();
            let mut results = Vec::with_capacity(cx.items(&v)?);
            for o in v.iter().flatten() {
                let kv = dec_opt_kv(cx, o.kv())?;
                results.push(match o.kind() {
                    fb::TxnOpKind::Get => TxnOpResult::Get(kv),
                    fb::TxnOpKind::Put => TxnOpResult::Put {
                        written: o.done(),
                        previous: kv,
                    },
                    fb::TxnOpKind::Delete => TxnOpResult::Delete {
                        deleted: o.done(),
                        previous: kv,
                    },
                    other => {
                        return Err(DecodeError::UnknownEnum {
                            field: "TxnOpResult.kind",
                            value: other.0,
                        })
                    }
                });
            }
            Outcome::Txn(TxnResult {
                succeeded: t.succeeded(),
                results,
                revision: t.revision(),
            })
        }
        fb::Outcome::RangeResult => {
            let t = r.result_as_range_result().ok_or(MISSING)?;
            let v = t.kvs();
            let mut kvs = Vec::with_capacity(cx.items(&v)?);
            for kv in v.iter().flatten() {
                kvs.push(dec_kv(cx, kv)?);
            }
            Outcome::Range(RangeResult {
                kvs,
                more: t.more(),
            })
        }
        fb::Outcome::StatusResult => {
            let t = r.result_as_status_result().ok_or(MISSING)?;
            let v = t.partitions();
            let mut partitions = Vec::with_capacity(cx.items(&v)?);
            for p in v.iter().flatten() {
                partitions.push(PartitionStatus {
                    partition: p.partition(),
                    term: p.term(),
                    leader_node: p.leader_node(),
                    commit_index: p.commit_index(),
                    applied_index: p.applied_index(),
                    is_leader: p.is_leader(),
                });
            }
            Outcome::Status(NodeStatus {
                node: t.node(),
                shard: t.shard(),
                map_epoch: t.map_epoch(),
                partitions,
                slowest_fsync_us: t.slowest_fsync_us(),
            })
        }
        fb::Outcome::ClusterMapResult => {
            let t = r.result_as_cluster_map_result().ok_or(MISSING)?;
            Outcome::ClusterMap(dec_map(
                cx,
                t.map()
                    .ok_or(DecodeError::MissingField("ClusterMapResult.map"))?,
            )?)
        }
        fb::Outcome::TransferLeaderResult => {
            let t = r.result_as_transfer_leader_result().ok_or(MISSING)?;
            Outcome::TransferLeader(TransferLeaderResult {
                partition: t.partition(),
                leader_node: t.leader_node(),
                term: t.term(),
            })
        }
        fb::Outcome::EventsResult => {
            let t = r.result_as_events_result().ok_or(MISSING)?;
            let v = t.events();
            let mut events = Vec::with_capacity(cx.items(&v)?);
            for e in v.iter().flatten() {
                events.push(Event {
                    seq: e.seq(),
                    unix_ms: e.unix_ms(),
                    node: e.node(),
                    shard: e.shard(),
                    partition: e.partition(),
                    kind: e.kind().unwrap_or_default().to_owned(),
                    detail: e.detail().unwrap_or_default().to_owned(),
                });
            }
            Outcome::Events(EventsResult {
                events,
                oldest: t.oldest(),
                newest: t.newest(),
                boot_id: t.boot_id(),
            })
        }
        fb::Outcome::BackupResult => {
            let t = r.result_as_backup_result().ok_or(MISSING)?;
            let data = cx.bytes(t.data());
            if t.offset()
                .checked_add(data.len() as u64)
                .is_none_or(|end| end > t.total_bytes())
            {
                return Err(DecodeError::Invalid(
                    "BackupResult: the chunk ends past the copy's length",
                ));
            }
            Outcome::Backup(BackupChunk {
                partition: t.partition(),
                index: t.index(),
                term: t.term(),
                revision: t.revision(),
                total_bytes: t.total_bytes(),
                offset: t.offset(),
                data,
            })
        }
        fb::Outcome::NONE => return Err(MISSING),
        other => {
            return Err(DecodeError::UnknownEnum {
                field: "Response.result_type",
                value: other.0,
            })
        }
    })
}

/// Decodes a `ClientResponses` frame body: verifies it, then checks every limit.
pub fn decode_responses(body: &Bytes, limits: &Limits) -> Result<ResponseBatch, DecodeError> {
    decode_responses_inner(body, limits).map_err(|e| e.logged("ResponseBatch"))
}

fn decode_responses_inner(body: &Bytes, limits: &Limits) -> Result<ResponseBatch, DecodeError> {
    let batch = flatbuffers::root_with_opts::<fb::ResponseBatch>(&limits.verifier_options(), body)?;
    let cx = Ctx { body, limits };
    let frame_error = batch.frame_error().map(dec_error).transpose()?;
    let v = batch.responses();
    let mut responses = Vec::with_capacity(cx.items(&v)?);
    for r in v.iter().flatten() {
        let header = r
            .header()
            .map(|h| ResponseHeader {
                partition: h.partition(),
                term: h.term(),
                applied_index: h.applied_index(),
            })
            .unwrap_or_default();
        let outcome = match r.error() {
            Some(e) => Err(dec_error(e)?),
            None => Ok(dec_outcome(&cx, &r)?),
        };
        responses.push(Response {
            id: r.id(),
            header,
            outcome,
        });
    }
    Ok(ResponseBatch {
        frame_error,
        responses,
    })
}
