//! Upper bounds of encoded body sizes, computed from the messages without encoding them.
//!
//! Senders pack requests and responses into frames with these bounds, so they never build a
//! body over [`Limits::body_bytes_max`] (building first and checking after would let one reply,
//! e.g. a range of 10,000 values of 1 MiB, allocate gigabytes before it is refused).
//!
//! # How the bounds are derived
//! flatbuffers lays a body out back to front; every item is aligned to its own size at most
//! (8 bytes for `u64` and for the `ResponseHeader` struct). So, in bytes:
//! - a byte vector of `n`: 4 (length) + `n` + at most 3 of alignment padding: `n + 8` below;
//!   a string adds its terminating zero: `n + 12`;
//! - a vector of `n` table offsets: 4 (length) + `4n` + padding: `4n + 8`;
//! - a table whose fields take `f` bytes in `k` fields: 4 (vtable offset) + `f` + padding
//!   (less than each field's size again: `2f` covers both) + its vtable (4 + 2 per field,
//!   aligned to 2): `16 + 2f + 2k` below, whether or not the vtable is shared;
//! - a union adds a one-byte type field and an offset field.
//!
//! Every bound below adds up those terms; `tests::estimates_bound_the_encoding` (and the
//! property test in `tests/roundtrip.rs`) check them against the real encoder.

use crate::frame::Limits;
use crate::map::ClusterMap;
use crate::messages::{
    KeyValue, Op, Outcome, Request, Response, ResponseBatch, ServerError, TxnOp, TxnOpResult,
};
use crate::DecodeError;

/// Bytes of a `RequestBatch` or `ResponseBatch` body besides its items (root offset, minimal
/// alignment, the batch table, the items vector's length and padding), without a
/// `frame_error`. Add each item's `encoded_bytes_max` to it.
pub const BATCH_ENCODED_BYTES_MAX: usize = 8 + table(8, 2) + offsets(0);

/// Upper bound of what one key-value costs in an encoded reply beyond its key and value bytes
/// (its table with the three revisions, two vector headers, padding, and its offset in the
/// enclosing vector).
pub const KV_ENCODED_OVERHEAD_BYTES: usize = table(32, 5) + bytes(0) + bytes(0) + 4;

const fn table(field_bytes: usize, fields: usize) -> usize {
    16 + 2 * field_bytes + 2 * fields
}

const fn bytes(n: usize) -> usize {
    n + 8
}

const fn opt_bytes(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        bytes(n)
    }
}

const fn string(n: usize) -> usize {
    n + 12
}

const fn offsets(n: usize) -> usize {
    4 * n + 8
}

/// An upper bound of the encoded key-value `key_len` + `value_len` bytes, its offset in the
/// enclosing vector included.
pub const fn kv_encoded_bytes_max(key_len: usize, value_len: usize) -> usize {
    KV_ENCODED_OVERHEAD_BYTES + key_len + value_len
}

fn kv(kv: &KeyValue) -> usize {
    kv_encoded_bytes_max(kv.key.len(), kv.value.len())
}

fn opt_kv(k: &Option<KeyValue>) -> usize {
    k.as_ref().map_or(0, kv)
}

fn txn_op(op: &TxnOp) -> usize {
    4 + table(11, 5)
        + match op {
            TxnOp::Get { key } | TxnOp::Delete { key, .. } => bytes(key.len()),
            TxnOp::Put(p) => bytes(p.key.len()) + bytes(p.value.len()),
        }
}

fn op(op: &Op) -> usize {
    match op {
        Op::Get { key, .. } | Op::Delete { key, .. } => table(5, 2) + bytes(key.len()),
        Op::Put(p) => table(10, 4) + bytes(p.key.len()) + bytes(p.value.len()),
        Op::Txn(t) => {
            let compares: usize = t
                .compares
                .iter()
                .map(|c| {
                    let value = match &c.target {
                        crate::messages::CompareTarget::Value(v) => bytes(v.len()),
                        _ => 0,
                    };
                    4 + table(18, 5) + bytes(c.key.len()) + value
                })
                .sum();
            let ops: usize = t.success.iter().chain(&t.failure).map(txn_op).sum();
            table(12, 3) + offsets(0) * 3 + compares + ops
        }
        Op::Range(r) => {
            table(34, 8) + bytes(r.start.len()) + opt_bytes(r.end.len()) + opt_bytes(r.after.len())
        }
        Op::Status | Op::ClusterMap => table(0, 0),
        Op::TransferLeader { .. } => table(16, 2),
        Op::Backup { .. } => table(24, 3),
        Op::Events { .. } => table(12, 2),
    }
}

fn error(e: &ServerError) -> usize {
    let strings = match e {
        ServerError::NotLeader {
            leader_endpoint, ..
        } => leader_endpoint.as_ref().map_or(0, |s| string(s.len())),
        ServerError::Unavailable { reason }
        | ServerError::InvalidArgument { reason }
        | ServerError::CrossPartition { reason }
        | ServerError::Internal { reason }
        | ServerError::OutcomeUnknown { reason } => string(reason.len()),
        ServerError::WrongShard { .. }
        | ServerError::StaleMap { .. }
        | ServerError::Timeout
        | ServerError::TooLarge { .. }
        | ServerError::Compacted { .. }
        | ServerError::FutureRevision { .. }
        | ServerError::Busy => 0,
    };
    table(41, 7) + strings
}

fn map(m: &ClusterMap) -> usize {
    let partitions: usize = m
        .partitions
        .iter()
        .map(|p| {
            let replicas: usize = p
                .replicas
                .iter()
                .map(|r| 4 + table(16, 3) + string(r.endpoint.len()))
                .sum();
            4 + table(20, 3) + offsets(0) + replicas
        })
        .sum();
    // Slot ranges are 16-byte structs aligned to 8.
    table(4, 1) + table(22, 4) + 16 * m.ranges.len() + 16 + offsets(0) + partitions
}

fn outcome(o: &Outcome) -> usize {
    match o {
        Outcome::Get(k) => table(4, 1) + opt_kv(k),
        Outcome::Put(p) => table(13, 3) + opt_kv(&p.previous),
        Outcome::Delete(d) => table(13, 3) + opt_kv(&d.previous),
        Outcome::Txn(t) => {
            let results: usize = t
                .results
                .iter()
                .map(|r| {
                    4 + table(6, 3)
                        + match r {
                            TxnOpResult::Get(k)
                            | TxnOpResult::Put { previous: k, .. }
                            | TxnOpResult::Delete { previous: k, .. } => opt_kv(k),
                        }
                })
                .sum();
            table(13, 3) + offsets(0) + results
        }
        Outcome::Range(r) => table(5, 2) + offsets(0) + r.kvs.iter().map(kv).sum::<usize>(),
        Outcome::Status(s) => table(32, 5) + offsets(0) + s.partitions.len() * (4 + table(41, 6)),
        Outcome::ClusterMap(m) => map(m),
        Outcome::TransferLeader(_) => table(24, 3),
        Outcome::Backup(b) => table(52, 7) + opt_bytes(b.data.len()),
        Outcome::Events(r) => {
            table(28, 4)
                + offsets(0)
                + r.events
                    .iter()
                    .map(|e| 4 + table(52, 7) + string(e.kind.len()) + string(e.detail.len()))
                    .sum::<usize>()
        }
    }
}

impl Request {
    /// An upper bound of this request's share of an encoded `RequestBatch` body (its offset in
    /// the batch included): a batch body is at most [`BATCH_ENCODED_BYTES_MAX`] plus the sum
    /// over its requests.
    pub fn encoded_bytes_max(&self) -> usize {
        4 + table(45, 7) + op(&self.op)
    }

    /// Whether this request, alone in a frame, fits `limits` (by [`Self::encoded_bytes_max`]);
    /// a client refuses one that does not before sending it.
    pub fn check_fits_frame(&self, limits: &Limits) -> Result<(), DecodeError> {
        self.op.check_fits_frame(limits)
    }
}

impl Op {
    /// Whether a request carrying this operation, alone in a frame, fits `limits` (by
    /// [`Request::encoded_bytes_max`], which does not depend on the request's numbers).
    pub fn check_fits_frame(&self, limits: &Limits) -> Result<(), DecodeError> {
        let len = BATCH_ENCODED_BYTES_MAX + 4 + table(45, 7) + op(self);
        if len > limits.body_bytes_max() {
            return Err(DecodeError::BodyTooLarge {
                len,
                limit: limits.body_bytes_max(),
            });
        }
        Ok(())
    }
}

impl Response {
    /// An upper bound of this response's share of an encoded `ResponseBatch` body (its offset
    /// in the batch included): a batch body is at most [`BATCH_ENCODED_BYTES_MAX`] (plus the
    /// frame error's share, if any) plus the sum over its responses.
    pub fn encoded_bytes_max(&self) -> usize {
        4 + table(42, 5)
            + match &self.outcome {
                Ok(o) => outcome(o),
                Err(e) => error(e),
            }
    }

    /// An upper bound of the same response with no key-values in its range result (what
    /// every range key-value adds to is [`kv_encoded_bytes_max`]); equals
    /// [`Self::encoded_bytes_max`] for other outcomes.
    pub fn encoded_bytes_max_without_kvs(&self) -> usize {
        match &self.outcome {
            Ok(Outcome::Range(r)) => self.encoded_bytes_max() - r.kvs.iter().map(kv).sum::<usize>(),
            _ => self.encoded_bytes_max(),
        }
    }
}

impl ResponseBatch {
    /// An upper bound of the encoded body.
    pub fn encoded_bytes_max(&self) -> usize {
        BATCH_ENCODED_BYTES_MAX
            + self.frame_error.as_ref().map_or(0, error)
            + self
                .responses
                .iter()
                .map(Response::encoded_bytes_max)
                .sum::<usize>()
    }
}

/// An upper bound of an encoded `RequestBatch` body of `requests`.
pub fn requests_encoded_bytes_max(requests: &[Request]) -> usize {
    BATCH_ENCODED_BYTES_MAX
        + requests
            .iter()
            .map(Request::encoded_bytes_max)
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{
        BodyEncoder, Compare, CompareOp, CompareTarget, Consistency, Put, PutResult, Range,
        RangeResult, ResponseHeader, Txn, TxnResult,
    };
    use bytes::Bytes;

    fn b(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    fn kv_of(k: usize, v: usize) -> KeyValue {
        KeyValue {
            key: b(k),
            value: b(v),
            create_revision: u64::MAX,
            mod_revision: u64::MAX,
            version: u64::MAX,
        }
    }

    fn response(outcome: Result<Outcome, ServerError>) -> Response {
        Response {
            id: u64::MAX,
            header: ResponseHeader {
                partition: 1,
                term: 2,
                applied_index: 3,
            },
            outcome,
        }
    }

    /// Worst cases for padding (odd lengths, every optional field set) and many items.
    #[test]
    fn estimates_bound_the_encoding() {
        let mut enc = BodyEncoder::new();
        let lens = [0usize, 1, 3, 5, 7, 8, 9, 1023];
        let mut responses = Vec::new();
        for &k in &lens {
            for &v in &lens {
                responses.push(response(Ok(Outcome::Get(Some(kv_of(k.max(1), v))))));
                responses.push(response(Ok(Outcome::Put(PutResult {
                    written: true,
                    previous: Some(kv_of(k.max(1), v)),
                    revision: 9,
                }))));
            }
        }
        responses.push(response(Ok(Outcome::Range(RangeResult {
            kvs: (0..100).map(|i| kv_of(1 + i % 9, i % 13)).collect(),
            more: true,
        }))));
        responses.push(response(Ok(Outcome::Txn(TxnResult {
            succeeded: true,
            results: (0..50)
                .map(|i| match i % 3 {
                    0 => TxnOpResult::Get(Some(kv_of(3, i))),
                    1 => TxnOpResult::Put {
                        written: true,
                        previous: Some(kv_of(5, i)),
                    },
                    _ => TxnOpResult::Delete {
                        deleted: true,
                        previous: None,
                    },
                })
                .collect(),
            revision: 3,
        }))));
        for e in [
            ServerError::OutcomeUnknown {
                reason: "x".repeat(13),
            },
            ServerError::NotLeader {
                leader_node: 3,
                leader_endpoint: Some("127.0.0.1:7001".into()),
            },
            ServerError::TooLarge { limit: 5 },
            ServerError::Compacted { compacted: 9 },
            ServerError::FutureRevision { current: u64::MAX },
        ] {
            responses.push(response(Err(e)));
        }
        responses.push(response(Ok(Outcome::TransferLeader(
            crate::messages::TransferLeaderResult {
                partition: u64::MAX,
                leader_node: u64::MAX,
                term: u64::MAX,
            },
        ))));
        for n in [0, 1, 7, 4096] {
            responses.push(response(Ok(Outcome::Backup(
                crate::messages::BackupChunk {
                    partition: u64::MAX,
                    index: u64::MAX,
                    term: u64::MAX,
                    revision: u64::MAX,
                    total_bytes: u64::MAX,
                    offset: u64::MAX - 4096,
                    data: b(n),
                },
            ))));
        }
        responses.push(response(Ok(Outcome::Events(
            crate::messages::EventsResult {
                events: (0..20)
                    .map(|i| crate::messages::Event {
                        seq: u64::MAX - i,
                        unix_ms: u64::MAX,
                        node: u64::MAX,
                        shard: u32::MAX,
                        partition: u64::MAX,
                        kind: "k".repeat(i as usize),
                        detail: "d".repeat(3 * i as usize),
                    })
                    .collect(),
                oldest: u64::MAX,
                newest: u64::MAX,
                boot_id: u64::MAX,
            },
        ))));
        // Each alone, then all together.
        for r in &responses {
            let batch = ResponseBatch {
                frame_error: None,
                responses: vec![r.clone()],
            };
            let n = enc.responses(&batch).len();
            assert!(n <= batch.encoded_bytes_max(), "{n} > estimate for {r:?}");
        }
        let batch = ResponseBatch {
            frame_error: Some(ServerError::Busy),
            responses,
        };
        let n = enc.responses(&batch).len();
        assert!(n <= batch.encoded_bytes_max());

        let mut requests = Vec::new();
        for &k in &lens {
            for &v in &lens {
                let put = Put {
                    key: b(k.max(1)),
                    value: b(v),
                    if_absent: true,
                    return_previous: true,
                };
                requests.push(Op::Put(put.clone()));
                requests.push(Op::Txn(Txn {
                    compares: vec![Compare {
                        key: b(k.max(1)),
                        op: CompareOp::Equal,
                        target: CompareTarget::Value(b(v)),
                    }],
                    success: vec![TxnOp::Put(put.clone()), TxnOp::Get { key: b(k.max(1)) }],
                    failure: vec![TxnOp::Delete {
                        key: b(v.max(1)),
                        return_previous: true,
                    }],
                }));
                requests.push(Op::Range(Range {
                    partition: 1,
                    start: b(k),
                    end: b(v),
                    limit: 3,
                    keys_only: true,
                    consistency: Consistency::Stale,
                    after: b(v),
                    revision: u64::MAX - k as u64,
                }));
            }
        }
        requests.push(Op::TransferLeader {
            partition: u64::MAX,
            to_node: u64::MAX,
        });
        requests.push(Op::Events {
            after: u64::MAX,
            limit: u32::MAX,
        });
        requests.push(Op::Backup {
            partition: u64::MAX,
            index: u64::MAX,
            offset: u64::MAX,
        });
        let requests: Vec<Request> = requests
            .into_iter()
            .map(|op| Request {
                id: u64::MAX,
                session: u64::MAX,
                seq: u64::MAX,
                map_epoch: u64::MAX,
                op,
                first_unacked: u64::MAX,
            })
            .collect();
        for r in &requests {
            let n = enc.requests(std::slice::from_ref(r)).len();
            let est = requests_encoded_bytes_max(std::slice::from_ref(r));
            assert!(n <= est, "{n} > {est} for {r:?}");
        }
        let n = enc.requests(&requests).len();
        assert!(n <= requests_encoded_bytes_max(&requests));
    }

    #[test]
    fn a_request_too_large_for_a_frame_is_refused() {
        let limits = Limits::default();
        let put = |n: usize| Request {
            id: 1,
            session: 1,
            seq: 1,
            map_epoch: 1,
            op: Op::Txn(Txn {
                compares: vec![],
                success: (0..n)
                    .map(|i| {
                        TxnOp::Put(Put {
                            key: Bytes::from(format!("k{i}")),
                            value: b(limits.value_bytes_max),
                            if_absent: false,
                            return_previous: false,
                        })
                    })
                    .collect(),
                failure: vec![],
            }),
            first_unacked: 1,
        };
        assert!(put(3).check_fits_frame(&limits).is_ok());
        assert!(matches!(
            put(4).check_fits_frame(&limits),
            Err(DecodeError::BodyTooLarge { .. })
        ));
    }
}
