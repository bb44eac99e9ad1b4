//! The workload: concurrent clients (the real `wire::client::Client`, one session each) doing
//! register operations (get, put, compare-and-set) on a few shared keys, and adds to an
//! append-only set (a put of a key nobody else writes). Every operation is recorded with a
//! logical call and return time from one counter shared by all clients, so "A returned before
//! B was called" in the history means exactly that in real time.
//!
//! Outcomes follow Jepsen's rules: `ok` (the client got an answer), `fail` (the operation
//! certainly had no effect: only reads, which change nothing, are failed), `info` (a write
//! whose outcome the client does not know: timeout, lost connection, an error after sending).
//! An `info` write may take effect at any time after its call, or never; the checker treats it
//! so (`ret = None`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;
use wire::client::{Client, ClientError};
use wire::Consistency;

use crate::rng::Rng;

/// Workload settings.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Concurrent clients, each with its own session and connections.
    pub clients: u64,
    /// Register keys shared by the clients.
    pub keys: u64,
    /// Operations per second per client at most (closed loop below that).
    pub rate_per_client: u64,
    /// Seed of the clients' choices.
    pub seed: u64,
    /// Deadline of one client call, retries included.
    pub request_timeout: Duration,
    /// Negative control: send every get with `Stale` consistency but record it as the
    /// linearizable or follower get it claims to be. Under partitions the checker must then
    /// find violations; a run that stays clean this way shows the checks are blind.
    pub control_stale_reads: bool,
}

/// Jepsen's three outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The client got an answer.
    Ok,
    /// The operation certainly had no effect.
    Fail,
    /// Unknown outcome.
    Info,
}

/// What an operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Linearizable get (ReadIndex at the leader).
    GetLinearizable,
    /// Follower get (read index from the leader, served by a follower; linearizable).
    GetFollower,
    /// Stale get (a replica's local state; only checked for values nobody wrote).
    GetStale,
    /// Put of a unique value.
    Put,
    /// Compare-and-set from the value last seen to a unique value.
    Cas,
    /// Set add: put of a key only this operation writes.
    Add,
}

/// One operation of the history.
#[derive(Debug, Clone, Serialize)]
pub struct OpRecord {
    /// Client id (1-based; the final reads use 0).
    pub client: u64,
    /// What it was.
    pub kind: Kind,
    /// The key.
    pub key: String,
    /// Put/add: the value written; cas: the new value.
    pub value: Option<String>,
    /// Cas: the value it required (`None` inside: the key must be absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<Option<String>>,
    /// Logical call time.
    pub call: u64,
    /// Logical return time; `None` for an unknown outcome.
    pub ret: Option<u64>,
    /// Wall time of the call, µs since the workload started.
    pub start_us: u64,
    /// Wall time the call returned (with an answer or an error), µs since the start.
    pub end_us: u64,
    /// Outcome class.
    pub status: Status,
    /// Get: the value read (`None` inside: absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<Option<String>>,
    /// Cas: whether it wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cas_ok: Option<bool>,
    /// The error, for `fail` and `info`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The shared history.
pub struct Recorder {
    clock: AtomicU64,
    start: Instant,
    ops: Mutex<Vec<OpRecord>>,
}

impl Recorder {
    /// An empty history whose wall times count from `start`.
    pub fn new(start: Instant) -> Self {
        Recorder {
            clock: AtomicU64::new(1),
            start,
            ops: Mutex::new(Vec::new()),
        }
    }

    /// The next logical instant: strictly after every instant handed out before.
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    /// µs since the start.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Adds a finished operation.
    pub fn push(&self, op: OpRecord) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }

    /// The history so far, in call order.
    pub fn snapshot(&self) -> Vec<OpRecord> {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone();
        ops.sort_by_key(|o| o.call);
        ops
    }
}

/// The key of register `k`.
pub fn register_key(k: u64) -> String {
    format!("r/{k}")
}

/// Prefix of the set's keys; the end of its range is [`SET_END`].
pub const SET_PREFIX: &str = "s/";
/// Exclusive end of the set's key range.
pub const SET_END: &str = "s0";

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A get with `kind`'s consistency, recorded; returns the value read (`None`: the read failed).
pub async fn get(
    rec: &Recorder,
    client: &Client,
    client_id: u64,
    key: &str,
    kind: Kind,
    control_stale: bool,
) -> Option<Option<String>> {
    let consistency = match kind {
        _ if control_stale => Consistency::Stale,
        Kind::GetFollower => Consistency::Follower,
        Kind::GetStale => Consistency::Stale,
        _ => Consistency::Linearizable,
    };
    let start_us = rec.now_us();
    let call = rec.tick();
    let result = client
        .get_with(Bytes::from(key.to_owned()), consistency)
        .await;
    let ret = rec.tick();
    let end_us = rec.now_us();
    let mut op = OpRecord {
        client: client_id,
        kind,
        key: key.to_owned(),
        value: None,
        expected: None,
        call,
        ret: Some(ret),
        start_us,
        end_us,
        status: Status::Ok,
        read: None,
        cas_ok: None,
        error: None,
    };
    let out = match result {
        Ok(kv) => {
            let v = kv.map(|kv| text(&kv.value));
            op.read = Some(v.clone());
            Some(v)
        }
        Err(e) => {
            // A read changes nothing: a failed read is simply not in the history's constraints.
            op.status = Status::Fail;
            op.ret = None;
            op.error = Some(e.to_string());
            None
        }
    };
    rec.push(op);
    out
}

/// A put (register or set add); returns whether it was acknowledged.
pub async fn put(
    rec: &Recorder,
    client: &Client,
    client_id: u64,
    key: &str,
    value: &str,
    kind: Kind,
) -> bool {
    let start_us = rec.now_us();
    let call = rec.tick();
    let result = client
        .put(Bytes::from(key.to_owned()), Bytes::from(value.to_owned()))
        .await;
    let ret = rec.tick();
    let end_us = rec.now_us();
    let (status, error) = write_outcome(result.as_ref().map(|_| ()));
    rec.push(OpRecord {
        client: client_id,
        kind,
        key: key.to_owned(),
        value: Some(value.to_owned()),
        expected: None,
        call,
        ret: (status == Status::Ok).then_some(ret),
        start_us,
        end_us,
        status,
        read: None,
        cas_ok: None,
        error,
    });
    status == Status::Ok
}

/// A compare-and-set; returns whether it wrote (`None`: unknown).
pub async fn cas(
    rec: &Recorder,
    client: &Client,
    client_id: u64,
    key: &str,
    expected: Option<&str>,
    new: &str,
) -> Option<bool> {
    let start_us = rec.now_us();
    let call = rec.tick();
    let result = client
        .cas(
            Bytes::from(key.to_owned()),
            expected.map(|e| Bytes::from(e.to_owned())),
            Bytes::from(new.to_owned()),
        )
        .await;
    let ret = rec.tick();
    let end_us = rec.now_us();
    let (status, error) = write_outcome(result.as_ref().map(|_| ()));
    let cas_ok = result.ok();
    rec.push(OpRecord {
        client: client_id,
        kind: Kind::Cas,
        key: key.to_owned(),
        value: Some(new.to_owned()),
        expected: Some(expected.map(str::to_owned)),
        call,
        ret: (status == Status::Ok).then_some(ret),
        start_us,
        end_us,
        status,
        read: None,
        cas_ok,
        error,
    });
    cas_ok
}

/// A write's outcome class. Every error is `info`: the client cannot tell whether a request
/// that was sent took effect (a timeout, a lost connection, even a server error on a retry of
/// a request an earlier attempt of which may have committed).
fn write_outcome(result: Result<(), &ClientError>) -> (Status, Option<String>) {
    match result {
        Ok(()) => (Status::Ok, None),
        Err(e) => (Status::Info, Some(e.to_string())),
    }
}

/// One client's loop until `stop_at`.
pub async fn client_loop(
    id: u64,
    client: Client,
    rec: Arc<Recorder>,
    cfg: WorkloadConfig,
    stop_at: Instant,
    acked_adds: Arc<Mutex<Vec<String>>>,
) {
    let mut rng = Rng::new(cfg.seed, 1000 + id);
    let mut seen: Vec<Option<String>> = vec![None; cfg.keys as usize];
    let mut n = 0u64;
    let period = Duration::from_micros(1_000_000 / cfg.rate_per_client.max(1));
    let mut next = Instant::now();
    while Instant::now() < stop_at {
        // A rate cap, not a wait for anything: the loop never waits on the cluster's state.
        tokio::time::sleep_until(next).await;
        next = Instant::now().max(next) + period;
        n += 1;
        let k = rng.range(0, cfg.keys);
        let key = register_key(k);
        let value = format!("c{id}-{n}");
        let roll = rng.range(0, 100);
        if roll < 20 {
            let set_key = format!("{SET_PREFIX}{id}/{n}");
            if put(&rec, &client, id, &set_key, "1", Kind::Add).await {
                acked_adds
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(set_key);
            }
        } else if roll < 40 {
            if let Some(v) = get(
                &rec,
                &client,
                id,
                &key,
                Kind::GetLinearizable,
                cfg.control_stale_reads,
            )
            .await
            {
                seen[k as usize] = v;
            }
        } else if roll < 52 {
            if let Some(v) = get(
                &rec,
                &client,
                id,
                &key,
                Kind::GetFollower,
                cfg.control_stale_reads,
            )
            .await
            {
                seen[k as usize] = v;
            }
        } else if roll < 57 {
            get(&rec, &client, id, &key, Kind::GetStale, false).await;
        } else if roll < 77 {
            if put(&rec, &client, id, &key, &value, Kind::Put).await {
                seen[k as usize] = Some(value);
            }
        } else {
            let expected = seen[k as usize].clone();
            if cas(&rec, &client, id, &key, expected.as_deref(), &value).await == Some(true) {
                seen[k as usize] = Some(value);
            }
        }
    }
}
