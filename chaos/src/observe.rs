//! Looking at the cluster after healing: is every partition led, have the replicas converged,
//! and do they hold the same data?
//!
//! Per-replica reads need to name the replica, which the client's routing deliberately does
//! not allow, so [`stale_range_at`] speaks the client protocol directly to one endpoint: a
//! `Range` with `Stale` consistency, served from that replica's local state.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::client::Client;
use wire::{
    decode_responses, BodyEncoder, Consistency, FrameDecoder, FrameKind, Limits, NodeStatus, Op,
    Outcome, Range, Request,
};

/// Every node's status, or why it did not answer, keyed by node id.
pub async fn statuses(
    client: &Client,
    endpoints: &[(u64, String)],
) -> BTreeMap<u64, Result<NodeStatus, String>> {
    let mut out = BTreeMap::new();
    for (id, ep) in endpoints {
        out.insert(*id, client.status_of(ep).await.map_err(|e| e.to_string()));
    }
    out
}

/// Why the cluster is not healthy yet: a node that does not answer, a partition without a
/// leader, or replicas that disagree about who leads. Empty: healthy.
pub fn health_problems(status: &BTreeMap<u64, Result<NodeStatus, String>>) -> Vec<String> {
    let mut problems = Vec::new();
    // partition -> (node -> (is_leader, leader hint, term))
    let mut parts: BTreeMap<u64, Vec<(u64, bool, u64, u64)>> = BTreeMap::new();
    for (node, s) in status {
        match s {
            Err(e) => problems.push(format!("node {node} does not answer: {e}")),
            Ok(s) => {
                for p in &s.partitions {
                    parts.entry(p.partition).or_default().push((
                        *node,
                        p.is_leader,
                        p.leader_node,
                        p.term,
                    ));
                }
            }
        }
    }
    for (p, replicas) in &parts {
        let leaders: Vec<u64> = replicas.iter().filter(|r| r.1).map(|r| r.0).collect();
        match leaders.as_slice() {
            [] => problems.push(format!("partition {p} has no leader")),
            [l] => {
                let disagree: Vec<u64> =
                    replicas.iter().filter(|r| r.2 != *l).map(|r| r.0).collect();
                if !disagree.is_empty() {
                    problems.push(format!(
                        "partition {p}: node {l} leads but nodes {disagree:?} name another leader"
                    ));
                }
            }
            many => {
                // Two leaders can coexist briefly in different terms (the old one has not heard
                // of the new term yet); the poll waits for that to settle.
                problems.push(format!(
                    "partition {p}: several nodes claim to lead: {many:?}"
                ));
            }
        }
    }
    problems
}

/// Partitions whose replicas have not all applied the same index (or are missing). Empty:
/// converged.
pub fn convergence_problems(status: &BTreeMap<u64, Result<NodeStatus, String>>) -> Vec<String> {
    let mut applied: BTreeMap<u64, BTreeSet<(u64, u64)>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (node, s) in status {
        match s {
            Err(e) => problems.push(format!("node {node} does not answer: {e}")),
            Ok(s) => {
                for p in &s.partitions {
                    applied
                        .entry(p.partition)
                        .or_default()
                        .insert((p.applied_index, p.commit_index));
                }
            }
        }
    }
    for (p, set) in applied {
        if set.len() > 1 {
            problems.push(format!(
                "partition {p}: replicas at (applied, commit) {set:?}"
            ));
        }
    }
    problems
}

/// The partition id of the meta group, which holds the cluster map and no keys.
pub const META_PARTITION: u64 = 0;

/// The key-holding partitions each node hosts, from its status (the meta group left out: a
/// range on it is refused; its convergence is checked through the applied indexes).
pub fn hosted(status: &BTreeMap<u64, Result<NodeStatus, String>>) -> BTreeMap<u64, Vec<u64>> {
    let mut out: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (node, s) in status {
        if let Ok(s) = s {
            for p in s
                .partitions
                .iter()
                .filter(|p| p.partition != META_PARTITION)
            {
                out.entry(p.partition).or_default().push(*node);
            }
        }
    }
    out
}

/// One key as a replica holds it.
pub type Entry = (Bytes, Bytes, u64);

/// Every key of `partition` as the replica at `endpoint` holds it locally (stale range,
/// paged), within `timeout` for each page.
pub async fn stale_range_at(
    endpoint: &str,
    partition: u64,
    timeout: Duration,
) -> Result<Vec<Entry>, String> {
    let limits = Limits::default();
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(endpoint))
        .await
        .map_err(|_| format!("{endpoint}: connect timed out"))?
        .map_err(|e| format!("{endpoint}: {e}"))?;
    let dec = FrameDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut after = Bytes::new();
    // Each page holds at least one key, so the number of pages is bounded by the keys.
    for id in 1.. {
        let request = Request {
            id,
            session: 0,
            seq: 0,
            map_epoch: 0,
            op: Op::Range(Range {
                partition,
                start: Bytes::new(),
                end: Bytes::new(),
                limit: 1000,
                keys_only: false,
                consistency: Consistency::Stale,
                after: after.clone(),
                revision: 0,
            }),
            first_unacked: 0,
        };
        let mut frame = BytesMut::new();
        BodyEncoder::new()
            .request_frame(&mut frame, id, &[request], &limits)
            .map_err(|e| format!("encode: {e}"))?;
        stream
            .write_all(&frame)
            .await
            .map_err(|e| format!("{endpoint}: {e}"))?;
        let response = tokio::time::timeout(timeout, async {
            loop {
                if let Some(f) = dec.decode(&mut buf).map_err(|e| e.to_string())? {
                    if f.kind != FrameKind::ClientResponses {
                        return Err(format!("unexpected frame kind {:?}", f.kind));
                    }
                    let batch = decode_responses(&f.body, &limits).map_err(|e| e.to_string())?;
                    if let Some(e) = batch.frame_error {
                        return Err(format!("frame refused: {e}"));
                    }
                    if let Some(r) = batch.responses.into_iter().find(|r| r.id == id) {
                        return Ok(r);
                    }
                    continue;
                }
                let n = stream.read_buf(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("connection closed".to_string());
                }
            }
        })
        .await
        .map_err(|_| format!("{endpoint}: range timed out"))?
        .map_err(|e| format!("{endpoint}: {e}"))?;
        let r = match response.outcome {
            Ok(Outcome::Range(r)) => r,
            Ok(other) => return Err(format!("{endpoint}: unexpected answer {other:?}")),
            Err(e) => return Err(format!("{endpoint}: partition {partition}: {e}")),
        };
        for kv in &r.kvs {
            out.push((kv.key.clone(), kv.value.clone(), kv.mod_revision));
        }
        match (r.more, r.kvs.last()) {
            (true, Some(last)) => after = last.key.clone(),
            _ => break,
        }
    }
    Ok(out)
}

/// A partition whose replicas hold different data after convergence.
#[derive(Debug, Clone, Serialize)]
pub struct Divergence {
    /// The partition.
    pub partition: u64,
    /// Per node: keys held, or the error reading them.
    pub keys_per_node: BTreeMap<u64, String>,
    /// Up to a few keys on which two replicas differ.
    pub examples: Vec<String>,
}

/// Compares the replicas' data of every partition; returns the partitions that differ.
pub async fn compare_replicas(
    hosted: &BTreeMap<u64, Vec<u64>>,
    endpoint_of: impl Fn(u64) -> String,
    timeout: Duration,
) -> (usize, Vec<Divergence>) {
    let mut keys_checked = 0;
    let mut out = Vec::new();
    for (&partition, nodes) in hosted {
        let mut data: BTreeMap<u64, Result<Vec<Entry>, String>> = BTreeMap::new();
        for &n in nodes {
            data.insert(n, stale_range_at(&endpoint_of(n), partition, timeout).await);
        }
        let reference = data.values().find_map(|d| d.as_ref().ok());
        let mut examples = Vec::new();
        let mut differs = data.values().any(|d| d.is_err());
        if let Some(reference) = reference {
            keys_checked += reference.len();
            for d in data.values().filter_map(|d| d.as_ref().ok()) {
                if d != reference {
                    differs = true;
                    let a: BTreeSet<&Entry> = reference.iter().collect();
                    let b: BTreeSet<&Entry> = d.iter().collect();
                    for e in a.symmetric_difference(&b).take(5) {
                        examples.push(format!(
                            "{} = {} (mod revision {})",
                            String::from_utf8_lossy(&e.0),
                            String::from_utf8_lossy(&e.1),
                            e.2
                        ));
                    }
                }
            }
        }
        if differs {
            out.push(Divergence {
                partition,
                keys_per_node: data
                    .iter()
                    .map(|(n, d)| {
                        (
                            *n,
                            match d {
                                Ok(d) => format!("{} keys", d.len()),
                                Err(e) => e.clone(),
                            },
                        )
                    })
                    .collect(),
                examples,
            });
        }
    }
    (keys_checked, out)
}
