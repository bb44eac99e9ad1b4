//! Request and answer conversion: a client request -> the command it proposes, an applied
//! command's result or a local read -> the client's answer, and the error answers every path
//! shares. One place per concept: the shard core decides, this module only converts.

use bytes::Bytes;
use wire::{Op, Outcome, Request, Response, ResponseHeader, ServerError as WireError};

use super::convert;
use crate::command::{self, Command, CommandOp, Session};
use crate::state_machine::{self as sm, ApplyError, StateMachine};

/// Keys returned by one Range when the request's limit is 0.
pub const RANGE_KEYS_DEFAULT: usize = 10_000;

/// `NotLeader` naming the known leader (0: none) and, when known, its client endpoint.
pub fn not_leader(leader_node: u64, leader_endpoint: Option<String>) -> WireError {
    WireError::NotLeader {
        leader_node,
        leader_endpoint: if leader_node == 0 {
            None
        } else {
            leader_endpoint
        },
    }
}

/// The answer to a write whose outcome this node cannot know (its entry may or may not have
/// been applied): never a definite-looking error (README "Guarantees").
pub fn outcome_unknown(reason: &str) -> WireError {
    WireError::OutcomeUnknown {
        reason: reason.into(),
    }
}

pub fn no_map() -> WireError {
    WireError::Unavailable {
        reason: "no cluster map yet: the meta group has not committed one (cluster starting)"
            .into(),
    }
}

pub fn ok_response(id: u64, header: ResponseHeader, outcome: Outcome) -> Response {
    Response {
        id,
        header,
        outcome: Ok(outcome),
    }
}

pub fn error_response(id: u64, e: WireError) -> Response {
    Response {
        id,
        header: ResponseHeader::default(),
        outcome: Err(e),
    }
}

/// The command a write request proposes; the request's (session, seq) becomes the command's
/// session when the session is non-zero.
pub fn to_command(req: &Request) -> Result<Command, WireError> {
    let op = match &req.op {
        Op::Put(p) => CommandOp::Put(command::Put {
            key: p.key.clone(),
            value: p.value.clone(),
            if_absent: p.if_absent,
            return_prev: p.return_previous,
        }),
        Op::Delete {
            key,
            return_previous,
        } => CommandOp::Delete(command::Delete {
            key: key.clone(),
            return_prev: *return_previous,
        }),
        Op::Txn(t) => {
            let ops = |list: &[wire::TxnOp]| -> Result<Vec<command::TxnOp>, WireError> {
                list.iter()
                    .map(|o| match o {
                        wire::TxnOp::Get { key } => Ok(command::TxnOp::Get { key: key.clone() }),
                        wire::TxnOp::Put(p) if p.if_absent => Err(WireError::InvalidArgument {
                            reason: "put-if-absent inside a transaction (use a compare)".into(),
                        }),
                        wire::TxnOp::Put(p) => Ok(command::TxnOp::Put {
                            key: p.key.clone(),
                            value: p.value.clone(),
                            return_prev: p.return_previous,
                        }),
                        wire::TxnOp::Delete {
                            key,
                            return_previous,
                        } => Ok(command::TxnOp::Delete {
                            key: key.clone(),
                            return_prev: *return_previous,
                        }),
                    })
                    .collect()
            };
            CommandOp::Txn(command::Txn {
                compares: t
                    .compares
                    .iter()
                    .map(|c| command::Compare {
                        key: c.key.clone(),
                        cmp: match c.op {
                            wire::CompareOp::Equal => command::CompareOp::Equal,
                            wire::CompareOp::NotEqual => command::CompareOp::NotEqual,
                            wire::CompareOp::Less => command::CompareOp::Less,
                            wire::CompareOp::Greater => command::CompareOp::Greater,
                        },
                        target: match &c.target {
                            wire::CompareTarget::Value(v) => {
                                command::CompareTarget::Value(v.clone())
                            }
                            wire::CompareTarget::Version(v) => command::CompareTarget::Version(*v),
                            wire::CompareTarget::CreateRevision(v) => {
                                command::CompareTarget::CreateRevision(*v)
                            }
                            wire::CompareTarget::ModRevision(v) => {
                                command::CompareTarget::ModRevision(*v)
                            }
                            wire::CompareTarget::Exists(b) => command::CompareTarget::Exists(*b),
                        },
                    })
                    .collect(),
                success: ops(&t.success)?,
                failure: ops(&t.failure)?,
            })
        }
        _ => {
            return Err(WireError::Internal {
                reason: "not a write".into(),
            })
        }
    };
    let session = (req.session != 0 && !(req.seq == 0 && op.is_read_only())).then_some(Session {
        client_id: req.session,
        sequence: req.seq,
        first_unacked: req.first_unacked,
    });
    if session.is_some() && req.seq == 0 {
        return Err(WireError::InvalidArgument {
            reason: "a write with a session needs a sequence number >= 1".into(),
        });
    }
    Ok(Command { session, op })
}

fn kv_opt(key: &Bytes, kv: Option<sm::KeyValue>) -> Option<wire::KeyValue> {
    kv.map(|kv| convert::kv_to_wire(key.clone(), &kv))
}

/// Turns an applied command's result into the wire outcome.
pub fn to_response(
    id: u64,
    header: ResponseHeader,
    op: &Op,
    r: Result<sm::Response, ApplyError>,
) -> Response {
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            let err = match e {
                // The client already had an answer for this sequence, or gave up waiting for
                // it; not retryable, and the write's outcome is unknown to this request.
                ApplyError::SessionSequenceStale { .. } => WireError::OutcomeUnknown {
                    reason: e.to_string(),
                },
                other => WireError::Internal {
                    reason: other.to_string(),
                },
            };
            return Response {
                id,
                header,
                outcome: Err(err),
            };
        }
    };
    let outcome = match (op, r.op) {
        (Op::Put(p), sm::ResponseOp::Put { written, prev }) => Outcome::Put(wire::PutResult {
            written,
            previous: kv_opt(&p.key, prev),
            revision: if written { r.revision } else { 0 },
        }),
        (Op::Delete { key, .. }, sm::ResponseOp::Delete { deleted, prev }) => {
            Outcome::Delete(wire::DeleteResult {
                deleted,
                previous: kv_opt(key, prev),
                revision: if deleted { r.revision } else { 0 },
            })
        }
        (Op::Txn(t), sm::ResponseOp::Txn { succeeded, results }) => {
            let branch = if succeeded { &t.success } else { &t.failure };
            let mut wrote = false;
            let results = branch
                .iter()
                .zip(results)
                .map(|(o, res)| match res {
                    sm::OpResult::Get { kv } => wire::TxnOpResult::Get(kv_opt(o.key(), kv)),
                    sm::OpResult::Put { prev } => {
                        wrote = true;
                        wire::TxnOpResult::Put {
                            written: true,
                            previous: kv_opt(o.key(), prev),
                        }
                    }
                    sm::OpResult::Delete { deleted, prev } => {
                        wrote |= deleted;
                        wire::TxnOpResult::Delete {
                            deleted,
                            previous: kv_opt(o.key(), prev),
                        }
                    }
                })
                .collect();
            Outcome::Txn(wire::TxnResult {
                succeeded,
                results,
                revision: if wrote { r.revision } else { 0 },
            })
        }
        _ => {
            return Response {
                id,
                header,
                outcome: Err(WireError::Internal {
                    reason: "result does not match the request".into(),
                }),
            }
        }
    };
    ok_response(id, header, outcome)
}

/// The wire error for a read at a revision the partition cannot serve.
fn revision_error(e: sm::RevisionError) -> WireError {
    match e {
        sm::RevisionError::Compacted { compacted, .. } => WireError::Compacted { compacted },
        sm::RevisionError::Future { current, .. } => WireError::FutureRevision { current },
    }
}

/// Serves a read from a partition's state machine; `header` names the partition, its term
/// and the applied index the read saw.
/// `range_bytes_max` bounds a range page's key-values (`net::range_bytes_max`): a page always
/// fits one frame.
pub fn serve_read(
    sm: &StateMachine,
    header: ResponseHeader,
    id: u64,
    op: &Op,
    range_bytes_max: usize,
) -> Response {
    match op {
        Op::Get { key, .. } => {
            let kv = sm.get(key).map(|kv| convert::kv_to_wire(key.clone(), kv));
            ok_response(id, header, Outcome::Get(kv))
        }
        Op::Range(r) => {
            // wire: [start, end) with end empty = no end, resuming strictly after `after`.
            // state machine: end == [0] means "no end"; the smallest key after `after` is
            // `after` followed by a zero byte.
            let start: Bytes = if r.after.is_empty() {
                r.start.clone()
            } else {
                let mut s = r.after.to_vec();
                s.push(0);
                let s = Bytes::from(s);
                if s > r.start {
                    s
                } else {
                    r.start.clone()
                }
            };
            let end: &[u8] = if r.end.is_empty() { &[0] } else { &r.end };
            let limit = if r.limit == 0 {
                RANGE_KEYS_DEFAULT
            } else {
                (r.limit as usize).min(RANGE_KEYS_DEFAULT)
            };
            let res = if r.revision != 0 {
                // The revision is checked even for an empty range, so the answer does not
                // depend on the keys asked for.
                match sm.range_at(&start, end, limit, r.keys_only, range_bytes_max, r.revision) {
                    Ok(_) if !r.end.is_empty() && r.end <= start => sm::RangeResult::default(),
                    Ok(res) => res,
                    Err(e) => return error_response(id, revision_error(e)),
                }
            } else if !r.end.is_empty() && r.end <= start {
                sm::RangeResult::default()
            } else {
                sm.range(&start, end, limit, r.keys_only, range_bytes_max)
            };
            let kvs = res
                .kvs
                .into_iter()
                .map(|(k, kv)| convert::kv_to_wire(k, &kv))
                .collect();
            ok_response(
                id,
                header,
                Outcome::Range(wire::RangeResult {
                    kvs,
                    more: res.more,
                }),
            )
        }
        _ => error_response(
            id,
            WireError::Internal {
                reason: "not a read".into(),
            },
        ),
    }
}
