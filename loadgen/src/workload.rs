//! Operation mixes and how one operation is executed.

use crate::keys::{KeySpace, Rng, ValuePool};
use crate::target::{Connection, Consistency, OpError};

/// The operation mix of a run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Puts only.
    Put,
    /// Gets only (preloads the key space).
    Get,
    /// YCSB A, update heavy: 50% reads, 50% updates (puts).
    YcsbA,
    /// YCSB B, read mostly: 95% reads, 5% updates.
    YcsbB,
    /// YCSB C, read only.
    YcsbC,
    /// YCSB F, read-modify-write: 50% reads, 50% read-then-compare-and-set.
    YcsbF,
    /// Range scans of `scan_len` consecutive keys.
    Range,
}

impl Workload {
    /// Whether the workload reads keys it expects to exist (and so wants a preload by default).
    pub fn reads(self) -> bool {
        !matches!(self, Workload::Put)
    }

    /// Draws the next operation.
    pub fn next_op(self, rng: &mut Rng, keys: &KeySpace, scan_len: u64) -> Op {
        let read_fraction = match self {
            Workload::Put => 0.0,
            Workload::Get | Workload::YcsbC => 1.0,
            Workload::YcsbA | Workload::YcsbF => 0.5,
            Workload::YcsbB => 0.95,
            Workload::Range => {
                let start = keys.next_index(rng);
                let end = start.saturating_add(scan_len).min(keys.keys());
                return Op::Range {
                    start,
                    end,
                    limit: scan_len as usize,
                };
            }
        };
        let index = keys.next_index(rng);
        let read = read_fraction >= 1.0 || (read_fraction > 0.0 && rng.next_f64() < read_fraction);
        match (read, self) {
            (true, _) => Op::Get { index },
            (false, Workload::YcsbF) => Op::Rmw { index },
            (false, _) => Op::Put { index },
        }
    }
}

/// Kinds of operation, each with its own latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// A put.
    Put,
    /// A get.
    Get,
    /// A read-modify-write: a get then a compare-and-set on the revision it returned, timed as
    /// one operation (YCSB F's "read-modify-write").
    Rmw,
    /// A range scan.
    Range,
    /// A delete.
    Delete,
}

impl OpKind {
    /// All kinds, in report order.
    pub const ALL: [OpKind; 5] = [
        OpKind::Put,
        OpKind::Get,
        OpKind::Rmw,
        OpKind::Range,
        OpKind::Delete,
    ];

    /// Index into per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Get => "get",
            OpKind::Rmw => "rmw",
            OpKind::Range => "range",
            OpKind::Delete => "delete",
        }
    }
}

/// One operation to send, on key indices of the run's key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Put a fresh value under key `index`.
    Put {
        /// Key index.
        index: u64,
    },
    /// Get key `index`.
    Get {
        /// Key index.
        index: u64,
    },
    /// Read key `index`, then compare-and-set a fresh value on the revision read.
    Rmw {
        /// Key index.
        index: u64,
    },
    /// Scan keys `[start, end)`, at most `limit`.
    Range {
        /// First key index.
        start: u64,
        /// One past the last key index.
        end: u64,
        /// Most keys returned.
        limit: usize,
    },
    /// Delete key `index`.
    Delete {
        /// Key index.
        index: u64,
    },
}

impl Op {
    /// The histogram this operation is recorded in.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Put { .. } => OpKind::Put,
            Op::Get { .. } => OpKind::Get,
            Op::Rmw { .. } => OpKind::Rmw,
            Op::Range { .. } => OpKind::Range,
            Op::Delete { .. } => OpKind::Delete,
        }
    }
}

/// What a successful operation observed, beyond success: counted in the report, not errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// A get (or the read of a read-modify-write) found no value.
    pub not_found: bool,
    /// A compare-and-set lost to a concurrent write.
    pub cas_conflict: bool,
}

/// Sends `op` on `conn` and waits for its result.
pub async fn execute<C: Connection>(
    conn: &C,
    op: Op,
    keys: &KeySpace,
    values: &ValuePool,
    rng: &mut Rng,
    consistency: Consistency,
) -> Result<Outcome, OpError> {
    match op {
        Op::Put { index } => {
            conn.put(keys.key(index), values.value(rng)).await?;
            Ok(Outcome::default())
        }
        Op::Get { index } => {
            let v = conn.get(keys.key(index), consistency).await?;
            Ok(Outcome {
                not_found: v.is_none(),
                ..Outcome::default()
            })
        }
        Op::Rmw { index } => {
            let key = keys.key(index);
            // Read linearizably whatever the run's read consistency: a stale revision would
            // only manufacture conflicts.
            let current = conn.get(key.clone(), Consistency::Linearizable).await?;
            let revision = current.as_ref().map_or(0, |v| v.mod_revision);
            let done = conn.cas(key, revision, values.value(rng)).await?;
            Ok(Outcome {
                not_found: current.is_none(),
                cas_conflict: !done,
            })
        }
        Op::Range { start, end, limit } => {
            // Past the last index, end at `l`: after every `k...` key (key(keys) may need one
            // more digit than the padding, and would then sort before the last keys).
            let end_key = if end >= keys.keys() {
                b"l".to_vec()
            } else {
                keys.key(end)
            };
            let n = conn
                .range(keys.key(start), end_key, limit, consistency)
                .await?;
            if n > limit {
                tracing::warn!(
                    returned = n,
                    limit,
                    "range returned more keys than its limit"
                );
                return Err(OpError::BadResponse(format!(
                    "range returned {n} keys, limit {limit}"
                )));
            }
            Ok(Outcome {
                not_found: n == 0,
                ..Outcome::default()
            })
        }
        Op::Delete { index } => {
            let existed = conn.delete(keys.key(index)).await?;
            Ok(Outcome {
                not_found: !existed,
                ..Outcome::default()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Distribution;

    #[test]
    fn mixes_have_their_read_fractions() {
        let keys = KeySpace::new(1000, 8, Distribution::Uniform, 0.5).unwrap();
        let mut rng = Rng::new(3);
        let n = 20_000;
        let frac = |w: Workload, rng: &mut Rng| {
            (0..n)
                .filter(|_| matches!(w.next_op(rng, &keys, 10), Op::Get { .. }))
                .count() as f64
                / n as f64
        };
        assert_eq!(frac(Workload::Put, &mut rng), 0.0);
        assert_eq!(frac(Workload::YcsbC, &mut rng), 1.0);
        assert!((frac(Workload::YcsbA, &mut rng) - 0.5).abs() < 0.02);
        assert!((frac(Workload::YcsbB, &mut rng) - 0.95).abs() < 0.01);
        let f_ops: Vec<Op> = (0..1000)
            .map(|_| Workload::YcsbF.next_op(&mut rng, &keys, 10))
            .collect();
        assert!(f_ops.iter().any(|o| matches!(o, Op::Rmw { .. })));
        assert!(!f_ops.iter().any(|o| matches!(o, Op::Put { .. })));
        match Workload::Range.next_op(&mut rng, &keys, 10) {
            Op::Range { start, end, limit } => {
                assert!(end <= 1000 && end - start <= 10 && limit == 10)
            }
            other => panic!("{other:?}"),
        }
    }
}
