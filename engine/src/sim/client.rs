//! Simulated clients: sessions, retries and the recorded history.

use std::collections::BTreeMap;

use bytes::Bytes;
use raftcore::linearizability::{Event, KvInput, KvOutput};
use wire::{
    Compare, CompareOp, CompareTarget, Consistency, Op, Outcome, Put, Request, Response,
    ServerError as WireError, Txn, TxnOp,
};

/// What a client is doing with one operation.
pub struct ClientOp {
    /// Index of its event in the history (None: not checked, e.g. a stale read).
    pub event: Option<usize>,
    pub op: Op,
    /// Sequence number (0 for reads).
    pub seq: u64,
    pub partition: u64,
    pub is_write: bool,
    /// Follower/stale reads may go to any replica.
    pub spread: bool,
    /// Gives up at this step (outcome unknown).
    pub deadline: u64,
    /// Request ids of the attempts sent so far (a late answer to any of them counts).
    pub attempts: Vec<u64>,
    /// The current attempt times out at this step (lost request or reply).
    pub attempt_timeout: u64,
    /// Next attempt at this step (backoff), if not in flight.
    pub retry_at: Option<u64>,
    /// Node the next attempt goes to.
    pub target: u64,
    /// For a put: its unique value.
    pub value: Option<Bytes>,
}

/// One simulated client.
pub struct Client {
    pub id: u64,
    /// Writes without a session (as etcd clients through the gateway send them): `NotLeader`
    /// then means "not applied, the retry is a new write" and is checked as a definite error.
    pub sessionless: bool,
    pub session: u64,
    pub next_seq: u64,
    pub next_req: u64,
    pub op: Option<ClientOp>,
    /// Next operation not before this step.
    pub idle_until: u64,
    /// Known leader per partition.
    pub leaders: BTreeMap<u64, u64>,
    pub ops_done: u64,
}

/// What the client does after an answer.
pub enum Verdict {
    /// The operation is over; the output returned beside the verdict goes into its event.
    Done,
    /// Retry (same seq) at `target` after `delay` steps.
    Retry { target: Option<u64>, delay: u64 },
    /// A definite error: the operation did not take effect.
    DefiniteError(String),
    /// `OutcomeUnknown`: the client returns it to the caller at once, never retries it.
    Unknown,
}

/// The history under construction, with the values of writes that got a definite error.
#[derive(Default)]
pub struct History {
    pub events: Vec<Event<KvInput, KvOutput>>,
    pub failed_values: Vec<(Bytes, String)>,
}

/// Builds a request for `op` (a new attempt).
pub fn request(c: &mut Client, op: &ClientOp) -> Request {
    c.next_req += 1;
    Request {
        id: c.next_req,
        session: if op.is_write && !c.sessionless {
            c.session
        } else {
            0
        },
        seq: op.seq,
        map_epoch: 0,
        op: op.op.clone(),
        first_unacked: if op.is_write && !c.sessionless {
            op.seq
        } else {
            0
        },
    }
}

/// A put of `value`.
pub fn put(key: &Bytes, value: Bytes) -> Op {
    Op::Put(Put {
        key: key.clone(),
        value,
        if_absent: false,
        return_previous: false,
    })
}

/// A compare-and-set as a transaction: if the key holds `expected` (None: absent), put `new`.
pub fn cas(key: &Bytes, expected: Option<Bytes>, new: Bytes) -> Op {
    let target = match expected {
        Some(v) => CompareTarget::Value(v),
        None => CompareTarget::Exists(false),
    };
    Op::Txn(Txn {
        compares: vec![Compare {
            key: key.clone(),
            op: CompareOp::Equal,
            target,
        }],
        success: vec![TxnOp::Put(Put {
            key: key.clone(),
            value: new,
            if_absent: false,
            return_previous: false,
        })],
        failure: vec![],
    })
}

/// A read.
pub fn get(key: &Bytes, consistency: Consistency) -> Op {
    Op::Get {
        key: key.clone(),
        consistency,
    }
}

/// The history input of an op.
pub fn input_of(op: &Op) -> Option<KvInput> {
    Some(match op {
        Op::Get { key, .. } => KvInput::Get { key: key.to_vec() },
        Op::Put(p) => KvInput::Put {
            key: p.key.to_vec(),
            value: p.value.to_vec(),
        },
        Op::Txn(t) => {
            let c = t.compares.first()?;
            let expected = match &c.target {
                CompareTarget::Value(v) => Some(v.to_vec()),
                CompareTarget::Exists(false) => None,
                _ => return None,
            };
            let new = match t.success.first()? {
                TxnOp::Put(p) => Some(p.value.to_vec()),
                _ => return None,
            };
            KvInput::Cas {
                key: c.key.to_vec(),
                expected,
                new,
            }
        }
        _ => return None,
    })
}

/// Decides what an answer means for the operation, following the Rust client's rules (wire
/// crate docs, "Retries" and "Exactly-once writes"): `NotLeader` follows the hint at once;
/// `Unavailable`, `Busy`, `Timeout` and map errors back off and retry with the same
/// (session, seq); anything else is a definite error. Returns the output on success.
pub fn judge(
    resp: &Response,
    spread: bool,
    sessionless_write: bool,
) -> (Verdict, Option<KvOutput>) {
    match &resp.outcome {
        // Without a session, a retry is a new write: NotLeader must mean "not applied".
        Err(WireError::NotLeader { .. }) if sessionless_write => (
            Verdict::DefiniteError("NotLeader (session-less write)".into()),
            None,
        ),
        Ok(Outcome::Get(kv)) => (
            Verdict::Done,
            Some(KvOutput::Get(kv.as_ref().map(|kv| kv.value.to_vec()))),
        ),
        Ok(Outcome::Put(_)) => (Verdict::Done, Some(KvOutput::Put)),
        Ok(Outcome::Txn(t)) => (Verdict::Done, Some(KvOutput::Cas(t.succeeded))),
        Ok(other) => (
            Verdict::DefiniteError(format!("unexpected outcome {other:?}")),
            None,
        ),
        Err(WireError::NotLeader { leader_node, .. }) => (
            Verdict::Retry {
                target: (*leader_node != 0 && !spread).then_some(*leader_node),
                delay: 1,
            },
            None,
        ),
        Err(
            WireError::Unavailable { .. }
            | WireError::Busy
            | WireError::Timeout
            | WireError::StaleMap { .. }
            | WireError::WrongShard { .. },
        ) => (
            Verdict::Retry {
                target: None,
                delay: 4,
            },
            None,
        ),
        Err(WireError::OutcomeUnknown { .. }) => (Verdict::Unknown, None),
        Err(e) => (Verdict::DefiniteError(format!("{e:?}")), None),
    }
}
