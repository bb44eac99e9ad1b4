//! The state machine against a simple, independently written model, on random logs; plus
//! determinism across replicas, the encode/decode path and snapshot restore.

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use common::{log, Entry};
use engine::command::{Command, CommandOp, CompareOp, CompareTarget, Limits, TxnOp};
use engine::snapshot;
use engine::state_machine::{
    ApplyError, CommandResult, Config, KeyValue, OpResult, Response, ResponseOp, RevisionError,
    StateMachine,
};
use proptest::prelude::*;

const SESSIONS_MAX: usize = 3;
const SESSION_RESULTS_MAX: usize = 3;

/// One client's session in the model: results in an unsorted vector searched linearly.
#[derive(Clone, Debug, PartialEq)]
struct ModelSession {
    client: u64,
    first_unacked: u64,
    last_index: u64,
    results: Vec<(u64, Response)>,
}

/// The model: a hash map of plain vectors, transactions applied to a copy that replaces the
/// map at the end, sessions in a vector searched linearly.
/// The model's key-value map: key -> (value, create revision, mod revision, version).
type ModelKv = HashMap<Vec<u8>, (Vec<u8>, u64, u64, u64)>;

#[derive(Default, Clone)]
struct Model {
    kv: ModelKv,
    rev: u64,
    sessions: Vec<ModelSession>,
    applied: u64,
}

fn to_kv(t: &(Vec<u8>, u64, u64, u64)) -> KeyValue {
    KeyValue {
        value: Bytes::from(t.0.clone()),
        create_revision: t.1,
        mod_revision: t.2,
        version: t.3,
    }
}

impl Model {
    fn holds(&self, c: &engine::command::Compare) -> bool {
        let cur = self.kv.get(c.key.as_ref());
        let (lhs, rhs): (i128, i128) = match &c.target {
            CompareTarget::Value(v) => match cur {
                None => return false,
                Some(t) => {
                    let o = t.0.as_slice().cmp(v.as_ref());
                    (o as i128, 0)
                }
            },
            CompareTarget::Version(v) => (cur.map_or(0, |t| t.3) as i128, *v as i128),
            CompareTarget::CreateRevision(v) => (cur.map_or(0, |t| t.1) as i128, *v as i128),
            CompareTarget::ModRevision(v) => (cur.map_or(0, |t| t.2) as i128, *v as i128),
            CompareTarget::Exists(b) => (cur.is_some() as i128, *b as i128),
        };
        match c.cmp {
            CompareOp::Equal => lhs == rhs,
            CompareOp::NotEqual => lhs != rhs,
            CompareOp::Less => lhs < rhs,
            CompareOp::Greater => lhs > rhs,
        }
    }

    fn write(
        map: &mut HashMap<Vec<u8>, (Vec<u8>, u64, u64, u64)>,
        key: &[u8],
        value: &[u8],
        rev: u64,
    ) -> Option<KeyValue> {
        let prev = map.get(key).cloned();
        let (create, version) = match &prev {
            Some(p) => (p.1, p.3 + 1),
            None => (rev, 1),
        };
        map.insert(key.to_vec(), (value.to_vec(), create, rev, version));
        prev.as_ref().map(to_kv)
    }

    fn run(&mut self, op: &CommandOp) -> Response {
        let next = self.rev + 1;
        match op {
            CommandOp::Put(p) => {
                let existing = self.kv.get(p.key.as_ref()).map(to_kv);
                if p.if_absent && existing.is_some() {
                    return Response {
                        revision: self.rev,
                        op: ResponseOp::Put {
                            written: false,
                            prev: if p.return_prev { existing } else { None },
                        },
                    };
                }
                let prev = Self::write(&mut self.kv, &p.key, &p.value, next);
                self.rev = next;
                Response {
                    revision: self.rev,
                    op: ResponseOp::Put {
                        written: true,
                        prev: if p.return_prev { prev } else { None },
                    },
                }
            }
            CommandOp::Delete(d) => {
                let prev = self.kv.remove(d.key.as_ref()).map(|t| to_kv(&t));
                if prev.is_some() {
                    self.rev = next;
                }
                Response {
                    revision: self.rev,
                    op: ResponseOp::Delete {
                        deleted: prev.is_some(),
                        prev: if d.return_prev { prev } else { None },
                    },
                }
            }
            CommandOp::Txn(t) => {
                let ok = t.compares.iter().all(|c| self.holds(c));
                let mut copy = self.kv.clone();
                let mut changed = false;
                let mut results = vec![];
                for op in if ok { &t.success } else { &t.failure } {
                    match op {
                        TxnOp::Put {
                            key,
                            value,
                            return_prev,
                        } => {
                            let prev = Self::write(&mut copy, key, value, next);
                            changed = true;
                            results.push(OpResult::Put {
                                prev: if *return_prev { prev } else { None },
                            });
                        }
                        TxnOp::Delete { key, return_prev } => {
                            let prev = copy.remove(key.as_ref()).map(|t| to_kv(&t));
                            changed |= prev.is_some();
                            results.push(OpResult::Delete {
                                deleted: prev.is_some(),
                                prev: if *return_prev { prev } else { None },
                            });
                        }
                        TxnOp::Get { key } => results.push(OpResult::Get {
                            kv: copy.get(key.as_ref()).map(to_kv),
                        }),
                    }
                }
                self.kv = copy;
                if changed {
                    self.rev = next;
                }
                Response {
                    revision: self.rev,
                    op: ResponseOp::Txn {
                        succeeded: ok,
                        results,
                    },
                }
            }
        }
    }

    /// The session rules as the state machine's module docs state them, written out plainly.
    fn apply(&mut self, index: u64, cmd: &Command) -> CommandResult {
        self.applied = index;
        let Some(s) = cmd.session else {
            return Ok(self.run(&cmd.op));
        };
        // Unknown client: open a session, evicting the one with the lowest last index.
        let i = match self.sessions.iter().position(|e| e.client == s.client_id) {
            Some(i) => i,
            None => {
                if self.sessions.len() == SESSIONS_MAX {
                    let oldest = (0..self.sessions.len())
                        .min_by_key(|&i| self.sessions[i].last_index)
                        .unwrap();
                    self.sessions.remove(oldest);
                }
                self.sessions.push(ModelSession {
                    client: s.client_id,
                    first_unacked: 0,
                    last_index: index,
                    results: vec![],
                });
                self.sessions.len() - 1
            }
        };
        self.sessions[i].last_index = index;
        let session = &mut self.sessions[i];
        // Raise first_unacked; forget answered results.
        session.first_unacked = session.first_unacked.max(s.first_unacked);
        let fu = session.first_unacked;
        session.results.retain(|(seq, _)| *seq >= fu);
        if s.sequence < fu {
            return Err(ApplyError::SessionSequenceStale {
                client_id: s.client_id,
                sequence: s.sequence,
                first_unacked: fu,
            });
        }
        if let Some((_, r)) = session.results.iter().find(|(seq, _)| *seq == s.sequence) {
            return Ok(r.clone());
        }
        let r = self.run(&cmd.op);
        let session = &mut self.sessions[i];
        session.results.push((s.sequence, r.clone()));
        if session.results.len() > SESSION_RESULTS_MAX {
            let lowest = session.results.iter().map(|(seq, _)| *seq).min().unwrap();
            session.results.retain(|(seq, _)| *seq != lowest);
            session.first_unacked = lowest + 1;
        }
        Ok(r)
    }

    fn assert_matches(&self, sm: &StateMachine) {
        assert_eq!(sm.revision(), self.rev, "revision");
        assert_eq!(sm.applied_index(), self.applied, "applied index");
        let mut expected: Vec<(Vec<u8>, KeyValue)> =
            self.kv.iter().map(|(k, t)| (k.clone(), to_kv(t))).collect();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        let actual: Vec<(Vec<u8>, KeyValue)> =
            sm.iter().map(|(k, kv)| (k.to_vec(), kv.clone())).collect();
        assert_eq!(actual, expected, "key-values");
        let mut sessions = self.sessions.clone();
        sessions.sort_by_key(|s| s.client);
        for s in &mut sessions {
            s.results.sort_by_key(|r| r.0);
        }
        let actual: Vec<ModelSession> = sm
            .sessions()
            .iter()
            .map(|(client, r)| ModelSession {
                client,
                first_unacked: r.first_unacked,
                last_index: r.last_index,
                results: r.results().map(|(q, r)| (q, r.clone())).collect(),
            })
            .collect();
        assert_eq!(actual, sessions, "sessions");
    }
}

fn apply_entry(sm: &mut StateMachine, index: u64, term: u64, e: &Entry) -> Option<CommandResult> {
    match e {
        Entry::Command(c) => Some(sm.apply(index, term, c)),
        Entry::Empty => {
            sm.advance_applied(index, term).unwrap();
            None
        }
        Entry::Garbage(g) => Some(sm.apply_entry(index, term, &Bytes::from(g.clone()))),
    }
}

fn config() -> Config {
    Config {
        partition_id: 7,
        sessions_max: SESSIONS_MAX,
        session_results_max: SESSION_RESULTS_MAX,
        history_revisions: 4,
        history_bytes_max: u64::MAX,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(512)))]

    /// Every result and the final state equal the model's.
    #[test]
    fn state_machine_matches_model(log in log()) {
        let mut sm = StateMachine::new(config());
        let mut model = Model::default();
        for (index, term, e) in &log {
            let got = apply_entry(&mut sm, *index, *term, e);
            let want = match e {
                Entry::Command(c) => Some(model.apply(*index, c)),
                Entry::Empty => { model.applied = *index; None }
                Entry::Garbage(g) => Some(match Command::decode(&Bytes::from(g.clone()), &Limits::FORMAT) {
                    Ok(c) => model.apply(*index, &c),
                    Err(err) => { model.applied = *index; Err(ApplyError::Malformed(err)) }
                }),
            };
            prop_assert_eq!(got, want, "entry {} {:?}", index, e);
            prop_assert_eq!(sm.applied_term(), *term);
            prop_assert_eq!(sm.check_invariants(), Ok(()));
        }
        model.assert_matches(&sm);
    }

    /// Two replicas fed the same log, one with commands and one with their encodings through
    /// `apply_entry`, give identical results and states; a replica restored from a snapshot
    /// taken anywhere in the log continues identically.
    #[test]
    fn replicas_and_snapshot_restore_agree(log in log(), cut in any::<prop::sample::Index>()) {
        let cut = if log.is_empty() { 0 } else { cut.index(log.len() + 1) };
        let mut a = StateMachine::new(config());
        let mut b = StateMachine::new(config());
        let mut restored: Option<StateMachine> = None;
        let membership = b"conf-state".to_vec();
        for (i, (index, term, e)) in log.iter().enumerate() {
            if i == cut {
                let bytes = snapshot::encode(&a, &membership);
                let snap = snapshot::decode(&bytes, &config()).unwrap();
                prop_assert_eq!(&snap.state, &a);
                prop_assert_eq!(&snap.meta.membership[..], &membership[..]);
                prop_assert_eq!(snap.meta.applied_index, a.applied_index());
                restored = Some(snap.state);
            }
            let ra = apply_entry(&mut a, *index, *term, e);
            let rb = match e {
                Entry::Command(c) => Some(b.apply_entry(*index, *term, &c.encode())),
                other => apply_entry(&mut b, *index, *term, other),
            };
            prop_assert_eq!(&ra, &rb);
            if let Some(r) = restored.as_mut() {
                let rr = apply_entry(r, *index, *term, e);
                prop_assert_eq!(&ra, &rr);
            }
        }
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(snapshot::encode(&a, b"m"), snapshot::encode(&b, b"m"));
        if let Some(r) = restored {
            prop_assert_eq!(r.check_invariants(), Ok(()));
            prop_assert_eq!(&r, &a);
        }
    }
}

type Kvs = Vec<(Vec<u8>, KeyValue)>;

/// The model's range: filter and sort the whole map.
fn model_range(
    model: &Model,
    start: &[u8],
    end: &[u8],
    limit: usize,
    keys_only: bool,
) -> (Kvs, Option<Vec<u8>>) {
    let mut all: Kvs = model
        .kv
        .iter()
        .filter(|(k, _)| {
            let k = k.as_slice();
            if end.is_empty() {
                k == start
            } else if end == [0] {
                k >= start
            } else {
                k >= start && k < end
            }
        })
        .map(|(k, t)| {
            let mut kv = to_kv(t);
            if keys_only {
                kv.value = Bytes::new();
            }
            (k.clone(), kv)
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    if limit > 0 && all.len() > limit {
        let next = all[limit].0.clone();
        all.truncate(limit);
        (all, Some(next))
    } else {
        (all, None)
    }
}

fn bound() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![]),
        Just(vec![0]),
        prop::sample::select(vec!["a", "b", "bb", "c", "f", "g"])
            .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..3),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(256)))]

    /// Range reads (single key, to the end, [start, end), limits, keys-only) equal the model's.
    #[test]
    fn range_matches_model(
        log in log(),
        queries in prop::collection::vec((bound(), bound(), 0usize..4, any::<bool>()), 1..16),
    ) {
        let mut sm = StateMachine::new(config());
        let mut model = Model::default();
        for (index, term, e) in &log {
            if let Entry::Command(c) = e {
                let _ = sm.apply(*index, *term, c);
                let _ = model.apply(*index, c);
            }
        }
        for (start, end, limit, keys_only) in queries {
            let got = sm.range(&start, &end, limit, keys_only, usize::MAX);
            let (want, next) = model_range(&model, &start, &end, limit, keys_only);
            let got_kvs: Vec<(Vec<u8>, KeyValue)> =
                got.kvs.iter().map(|(k, kv)| (k.to_vec(), kv.clone())).collect();
            prop_assert_eq!(got_kvs, want);
            prop_assert_eq!(got.more, next.is_some());
            prop_assert_eq!(got.next_key.map(|k| k.to_vec()), next);
            if end.is_empty() {
                prop_assert_eq!(sm.get(&start).cloned(), model.kv.get(&start).map(to_kv));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(256)))]

    /// Reads at a revision (issue 16, increment 2) equal the model's map as it was right after
    /// that revision was written, for every revision the history bound keeps; older ones are
    /// `Compacted` at exactly `revision - history_revisions`, newer ones `Future`. The model
    /// keeps a full copy of its map per revision; the state machine keeps superseded versions.
    #[test]
    fn reads_at_a_revision_match_the_model(
        log in log(),
        history in 0u64..6,
        bytes_cap in prop_oneof![Just(u64::MAX), 0u64..40],
        queries in prop::collection::vec((bound(), bound(), 0usize..4, any::<bool>(), any::<prop::sample::Index>()), 1..16),
    ) {
        let cfg = Config { history_revisions: history, history_bytes_max: bytes_cap, ..config() };
        let mut sm = StateMachine::new(cfg);
        let mut model = Model::default();
        let mut at: Vec<ModelKv> = vec![HashMap::new()];
        for (index, term, e) in &log {
            if let Entry::Command(c) = e {
                let _ = sm.apply(*index, *term, c);
                let _ = model.apply(*index, c);
                prop_assert_eq!(sm.check_invariants(), Ok(()));
                prop_assert!(sm.history_bytes() <= bytes_cap);
                if model.rev as usize == at.len() {
                    at.push(model.kv.clone());
                }
                prop_assert_eq!(at.len() as u64, model.rev + 1);
            }
        }
        // The count bound sets the point exactly; the byte cap can only move it further up.
        let compacted = sm.compacted();
        if bytes_cap == u64::MAX {
            prop_assert_eq!(compacted, model.rev.saturating_sub(history));
        } else {
            prop_assert!(compacted >= model.rev.saturating_sub(history));
            prop_assert!(compacted <= model.rev);
        }
        for (start, end, limit, keys_only, rev) in queries {
            // Revisions 0 ..= current + 1: below, in and above the readable window.
            let rev = rev.index(model.rev as usize + 2) as u64;
            let got = sm.range_at(&start, &end, limit, keys_only, usize::MAX, rev);
            let one = sm.get_at(&start, rev).map(|kv| kv.cloned());
            if rev > model.rev {
                let want = RevisionError::Future { requested: rev, current: model.rev };
                prop_assert_eq!(got, Err(want));
                prop_assert_eq!(one, Err(want));
                continue;
            }
            if rev < compacted {
                let want = RevisionError::Compacted { requested: rev, compacted };
                prop_assert_eq!(got, Err(want));
                prop_assert_eq!(one, Err(want));
                continue;
            }
            let then = Model { kv: at[rev as usize].clone(), ..Model::default() };
            let got = got.unwrap();
            let (want, next) = model_range(&then, &start, &end, limit, keys_only);
            let got_kvs: Vec<(Vec<u8>, KeyValue)> =
                got.kvs.iter().map(|(k, kv)| (k.to_vec(), kv.clone())).collect();
            prop_assert_eq!(got_kvs, want, "range at {}", rev);
            prop_assert_eq!(got.more, next.is_some());
            prop_assert_eq!(got.next_key.map(|k| k.to_vec()), next);
            prop_assert_eq!(one.unwrap(), then.kv.get(&start).map(to_kv), "get at {}", rev);
        }
        // The history holds only what the window needs: every kept old version is visible
        // at some readable revision (until > compacted), checked by check_invariants above,
        // and with no window nothing is kept.
        if history == 0 {
            prop_assert_eq!(sm.history_len(), 0);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(256)))]

    /// A snapshot taken under one history setting and restored under another (an operator
    /// changed `tuning.history_revisions` with a coordinated restart): the restored replica
    /// answers every command as one that applied the whole log, keeps its invariants
    /// (tombstones and old versions from the old setting included), moves its compaction
    /// point to the new bound on its first write, and every revision it still serves reads
    /// exactly as the model's map was then.
    #[test]
    fn restore_under_another_history_setting(
        log in log(),
        cut in any::<prop::sample::Index>(),
        before in 0u64..5,
        after in 0u64..5,
        queries in prop::collection::vec((bound(), bound(), any::<prop::sample::Index>()), 1..8),
    ) {
        let cut = if log.is_empty() { 0 } else { cut.index(log.len() + 1) };
        let with = |h: u64| Config { history_revisions: h, ..config() };
        let mut a = StateMachine::new(with(before));
        let mut model = Model::default();
        let mut at: Vec<ModelKv> = vec![HashMap::new()];
        let mut r: Option<StateMachine> = None;
        for (i, (index, term, e)) in log.iter().enumerate() {
            if i == cut {
                let bytes = snapshot::encode(&a, b"m");
                let snap = snapshot::decode(&bytes, &with(after)).unwrap();
                prop_assert_eq!(snap.state.check_invariants(), Ok(()));
                r = Some(snap.state);
            }
            let ra = apply_entry(&mut a, *index, *term, e);
            if let Entry::Command(c) = e {
                let _ = model.apply(*index, c);
                if model.rev as usize == at.len() {
                    at.push(model.kv.clone());
                }
            }
            if let Some(r) = r.as_mut() {
                let before_rev = r.revision();
                let rr = apply_entry(r, *index, *term, e);
                prop_assert_eq!(&ra, &rr);
                prop_assert_eq!(r.check_invariants(), Ok(()));
                if r.revision() > before_rev {
                    prop_assert!(r.compacted() >= r.revision().saturating_sub(after));
                }
            }
        }
        let Some(r) = r else { return Ok(()) };
        prop_assert!(r.iter().eq(a.iter()), "current state differs");
        prop_assert_eq!(r.len(), a.len());
        prop_assert_eq!(r.data_bytes(), a.data_bytes());
        for (start, end, rev) in queries {
            let rev = r.compacted() + rev.index((r.revision() - r.compacted()) as usize + 1) as u64;
            let then = Model { kv: at[rev as usize].clone(), ..Model::default() };
            let got = r.range_at(&start, &end, 0, false, usize::MAX, rev).unwrap();
            let (want, _) = model_range(&then, &start, &end, 0, false);
            let got_kvs: Vec<(Vec<u8>, KeyValue)> =
                got.kvs.iter().map(|(k, kv)| (k.to_vec(), kv.clone())).collect();
            prop_assert_eq!(got_kvs, want, "range at {}", rev);
            let one = r.get_at(&start, rev).unwrap().cloned();
            prop_assert_eq!(one, then.kv.get(&start).map(to_kv), "get at {}", rev);
        }
    }
}
