//! The checks on a finished history.
//!
//! - **Linearizability** of the register operations (linearizable and follower gets, puts,
//!   compare-and-sets) with `raftcore::linearizability::check_kv`, one key at a time
//!   (P-compositionality), on as many threads as there are cores.
//! - **Stale reads** are not linearizable by design; they are checked only for values that
//!   nobody had tried to write to that key before the read returned (a phantom value).
//! - **Lost writes**: every acknowledged set add must be present after healing.

use std::collections::{BTreeMap, HashMap, HashSet};

use raftcore::linearizability::{check_kv, Event, KvInput, KvOutput, Outcome};
use serde::Serialize;

use crate::workload::{Kind, OpRecord, Status};

/// The verdict on one key.
#[derive(Debug, Clone, Serialize)]
pub struct KeyVerdict {
    /// The key.
    pub key: String,
    /// Operations of the key in the checked history.
    pub ops: usize,
    /// Of which unknown-outcome.
    pub indeterminate: usize,
    /// "linearizable", "not linearizable" or "unknown" (search budget exhausted).
    pub verdict: &'static str,
    /// The checker's explanation of a violation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The register history of `ops` as the checker's events (stale gets, set adds and failed
/// reads left out), grouped by key.
pub fn register_events(ops: &[OpRecord]) -> BTreeMap<String, Vec<Event<KvInput, KvOutput>>> {
    let mut by_key: BTreeMap<String, Vec<Event<KvInput, KvOutput>>> = BTreeMap::new();
    for op in ops {
        let key = op.key.as_bytes().to_vec();
        let bytes = |s: &Option<String>| s.as_ref().map(|v| v.as_bytes().to_vec());
        let (input, output) = match op.kind {
            Kind::GetStale | Kind::Add => continue,
            Kind::GetLinearizable | Kind::GetFollower => {
                if op.status != Status::Ok {
                    continue; // a read with unknown outcome constrains nothing
                }
                (
                    KvInput::Get { key },
                    op.read.as_ref().map(|r| KvOutput::Get(bytes(r))),
                )
            }
            Kind::Put => (
                KvInput::Put {
                    key,
                    value: op.value.clone().unwrap_or_default().into_bytes(),
                },
                Some(KvOutput::Put),
            ),
            Kind::Cas => (
                KvInput::Cas {
                    key,
                    expected: op.expected.as_ref().and_then(bytes),
                    new: bytes(&op.value),
                },
                op.cas_ok.map(KvOutput::Cas),
            ),
        };
        let known = op.status == Status::Ok;
        by_key.entry(op.key.clone()).or_default().push(Event {
            client: op.client,
            call: op.call,
            ret: if known { op.ret } else { None },
            input,
            output: if known { output } else { None },
        });
    }
    by_key
}

/// Checks every key's register history, spreading keys over `threads` threads.
pub fn linearizability(ops: &[OpRecord], step_budget: u64, threads: usize) -> Vec<KeyVerdict> {
    let by_key: Vec<(String, Vec<Event<KvInput, KvOutput>>)> =
        register_events(ops).into_iter().collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((key, events)) = by_key.get(i) else {
                    break;
                };
                let (verdict, detail) = match check_kv(events, step_budget) {
                    Outcome::Linearizable => ("linearizable", None),
                    Outcome::NotLinearizable { detail } => ("not linearizable", Some(detail)),
                    Outcome::Unknown => ("unknown", None),
                };
                let v = KeyVerdict {
                    key: key.clone(),
                    ops: events.len(),
                    indeterminate: events.iter().filter(|e| e.ret.is_none()).count(),
                    verdict,
                    detail,
                };
                results.lock().unwrap_or_else(|p| p.into_inner()).push(v);
            });
        }
    });
    let mut out = results.into_inner().unwrap_or_else(|p| p.into_inner());
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// A stale read that returned a value no write of that key had been called with before the
/// read returned.
#[derive(Debug, Clone, Serialize)]
pub struct PhantomRead {
    /// The key.
    pub key: String,
    /// The value read.
    pub value: String,
    /// The read's logical call and return time.
    pub call: u64,
    /// See `call`.
    pub ret: u64,
}

/// Stale gets returning values that were never written to their key (before they returned).
pub fn phantom_stale_reads(ops: &[OpRecord]) -> Vec<PhantomRead> {
    // For each key, each written value and the earliest call of a write of it.
    let mut written: HashMap<(&str, &str), u64> = HashMap::new();
    for op in ops {
        if matches!(op.kind, Kind::Put | Kind::Cas | Kind::Add) {
            if let Some(v) = &op.value {
                let t = written.entry((&op.key, v)).or_insert(op.call);
                *t = (*t).min(op.call);
            }
        }
    }
    let mut out = Vec::new();
    for op in ops.iter().filter(|o| o.kind == Kind::GetStale) {
        let (Some(Some(v)), Some(ret)) = (&op.read, op.ret) else {
            continue;
        };
        let ok = written
            .get(&(op.key.as_str(), v.as_str()))
            .is_some_and(|&t| t < ret);
        if !ok {
            out.push(PhantomRead {
                key: op.key.clone(),
                value: v.clone(),
                call: op.call,
                ret,
            });
        }
    }
    out
}

/// Acknowledged set adds missing from the set read back after healing.
pub fn lost_adds(acked: &[String], present: &HashSet<String>) -> Vec<String> {
    let mut lost: Vec<String> = acked
        .iter()
        .filter(|k| !present.contains(*k))
        .cloned()
        .collect();
    lost.sort();
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: Kind, key: &str, call: u64, ret: Option<u64>) -> OpRecord {
        OpRecord {
            client: 1,
            kind,
            key: key.into(),
            value: None,
            expected: None,
            call,
            ret,
            start_us: 0,
            end_us: 0,
            status: if ret.is_some() {
                Status::Ok
            } else {
                Status::Info
            },
            read: None,
            cas_ok: None,
            error: None,
        }
    }

    fn put(key: &str, v: &str, call: u64, ret: Option<u64>) -> OpRecord {
        OpRecord {
            value: Some(v.into()),
            ..op(Kind::Put, key, call, ret)
        }
    }

    fn get(kind: Kind, key: &str, v: Option<&str>, call: u64, ret: u64) -> OpRecord {
        OpRecord {
            read: Some(v.map(str::to_owned)),
            ..op(kind, key, call, Some(ret))
        }
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_put_is_a_violation_only_when_linearizable() {
        let h = vec![
            put("r/0", "a", 1, Some(2)),
            put("r/0", "b", 3, Some(4)),
            get(Kind::GetStale, "r/0", Some("a"), 5, 6),
        ];
        let v = linearizability(&h, 100_000, 2);
        assert_eq!(v[0].verdict, "linearizable");
        let mut bad = h.clone();
        bad.push(get(Kind::GetFollower, "r/0", Some("a"), 7, 8));
        let v = linearizability(&bad, 100_000, 2);
        assert_eq!(v[0].verdict, "not linearizable", "{v:?}");
    }

    #[test]
    fn indeterminate_writes_may_or_may_not_happen() {
        let h = vec![
            put("r/0", "a", 1, Some(2)),
            put("r/0", "b", 3, None),
            get(Kind::GetLinearizable, "r/0", Some("a"), 5, 6),
            get(Kind::GetLinearizable, "r/0", Some("b"), 7, 8),
        ];
        assert_eq!(linearizability(&h, 100_000, 1)[0].verdict, "linearizable");
        // ...but once seen, it cannot be unseen.
        let mut bad = h.clone();
        bad.push(get(Kind::GetLinearizable, "r/0", Some("a"), 9, 10));
        assert_eq!(
            linearizability(&bad, 100_000, 1)[0].verdict,
            "not linearizable"
        );
    }

    #[test]
    fn phantom_stale_values_are_found() {
        let h = vec![
            put("r/0", "a", 1, None),
            get(Kind::GetStale, "r/0", Some("a"), 2, 3),
            get(Kind::GetStale, "r/0", Some("zz"), 4, 5),
            get(Kind::GetStale, "r/1", Some("a"), 6, 7),
            get(Kind::GetStale, "r/0", None, 8, 9),
        ];
        let p = phantom_stale_reads(&h);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].key.as_str(), p[0].value.as_str()), ("r/0", "zz"));
        assert_eq!(p[1].key, "r/1");
    }

    #[test]
    fn lost_adds_are_the_acknowledged_ones_missing() {
        let present: HashSet<String> = ["s/1/1".to_string()].into();
        let lost = lost_adds(&["s/1/1".into(), "s/1/2".into()], &present);
        assert_eq!(lost, vec!["s/1/2".to_string()]);
    }
}
