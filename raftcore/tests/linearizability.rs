//! Property tests and a large history for the linearizability checker.
//!
//! Histories are generated from a real sequential execution: every operation gets a
//! linearization point inside its interval, the operations are applied to a plain map in the
//! order of those points, and the map's answers become the recorded outputs. Such a history is
//! linearizable by construction; corrupting one read to a value nobody wrote must be caught.

use proptest::prelude::*;
use raftcore::linearizability::{check_kv, Event, HistoryRecorder, KvInput, KvOutput, Outcome};
use std::collections::BTreeMap;

/// A value no generated operation ever writes.
const NEVER_WRITTEN: &[u8] = b"never-written";

/// One generated operation, before times and outputs are decided.
#[derive(Debug, Clone)]
struct Spec {
    client: u8,
    /// 0 get, 1 put, 2 delete, 3 cas.
    kind: u8,
    key: u8,
    value: u8,
    /// For cas: the expected value (value space + 1 means absent).
    expected: u8,
    /// How long the operation stays open, in ticks.
    duration: u64,
    /// Where in its interval it takes effect, in percent.
    point_percent: u64,
    /// 0..=7 completes, 8 outcome unknown but applied, 9 outcome unknown and never applied.
    fate: u8,
}

fn value(v: u8, values: u8) -> Option<Vec<u8>> {
    (v < values).then(|| format!("v{v}").into_bytes())
}

/// How written values are chosen.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Values {
    /// From a small set (`Spec::value` modulo this many), so values repeat: hard for the checker.
    Few(u8),
    /// Every write a fresh value, as the simulator's clients do; a cas expects one of the two
    /// latest values written to its key (in generation order), or absence.
    Unique,
}

/// Builds a history from `specs` (see the module doc). Each client runs one operation at a
/// time; an unknown-outcome operation may take effect after its client gave up on it.
fn build_history(specs: &[Spec], values: Values) -> Vec<Event<KvInput, KvOutput>> {
    let mut recorder = HistoryRecorder::new();
    let mut clock: BTreeMap<u8, u64> = BTreeMap::new();
    let mut written: BTreeMap<u8, Vec<Vec<u8>>> = BTreeMap::new();
    // (linearization point, sequence number, op id, input, applied?)
    let mut points = Vec::new();
    for (seq, spec) in specs.iter().enumerate() {
        let call = clock.get(&spec.client).copied().unwrap_or(0) + 1;
        let ret = call + spec.duration;
        clock.insert(spec.client, ret);
        let key = format!("k{}", spec.key).into_bytes();
        let (new, expected) = match values {
            Values::Few(n) => (
                value(spec.value % n, n).expect("in range"),
                value(spec.expected, n),
            ),
            Values::Unique => {
                let history = written.entry(spec.key).or_default();
                let expected = match spec.expected % 3 {
                    0 => None,
                    back => history
                        .len()
                        .checked_sub(usize::from(back))
                        .map(|i| history[i].clone()),
                };
                let new = format!("c{}v{seq}", spec.client).into_bytes();
                history.push(new.clone());
                (new, expected)
            }
        };
        let input = match spec.kind {
            0 => KvInput::Get { key },
            1 => KvInput::Put { key, value: new },
            2 => KvInput::Delete { key },
            _ => KvInput::Cas {
                key,
                expected,
                // Values::Few: `value` out of range means "delete".
                new: match values {
                    Values::Few(n) => value(spec.value, n),
                    Values::Unique => Some(new),
                },
            },
        };
        let unknown = spec.fate >= 8;
        // An unknown-outcome operation may take effect long after its client stopped waiting.
        let span = if unknown {
            3 * spec.duration
        } else {
            spec.duration
        };
        let point = call + span * spec.point_percent / 100;
        let id = recorder.invoke(u64::from(spec.client), call, input.clone());
        if unknown {
            recorder.fail(id);
        }
        points.push((point, seq, id, input, spec.fate != 9, ret, unknown));
    }
    points.sort_by_key(|p| (p.0, p.1));
    let mut store: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (_, _, id, input, applied, ret, unknown) in points {
        if !applied {
            continue;
        }
        let output = match input {
            KvInput::Get { key } => KvOutput::Get(store.get(&key).cloned()),
            KvInput::Put { key, value } => {
                store.insert(key, value);
                KvOutput::Put
            }
            KvInput::Delete { key } => {
                store.remove(&key);
                KvOutput::Delete
            }
            KvInput::Cas { key, expected, new } => {
                if store.get(&key) == expected.as_ref() {
                    match new {
                        Some(new) => store.insert(key, new),
                        None => store.remove(&key),
                    };
                    KvOutput::Cas(true)
                } else {
                    KvOutput::Cas(false)
                }
            }
        };
        if !unknown {
            recorder.complete(id, ret, output);
        }
    }
    recorder.finish()
}

/// Replaces the output of the `which`-th completed get (modulo their number) by a value never
/// written; returns false if the history has no completed get.
fn corrupt_a_read(history: &mut [Event<KvInput, KvOutput>], which: usize) -> bool {
    let reads: Vec<usize> = history
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e.input, KvInput::Get { .. }) && e.ret.is_some())
        .map(|(i, _)| i)
        .collect();
    if reads.is_empty() {
        return false;
    }
    let i = reads[which % reads.len()];
    history[i].output = Some(KvOutput::Get(Some(NEVER_WRITTEN.to_vec())));
    true
}

const VALUES: u8 = 3;

fn spec_strategy(clients: u8, keys: u8) -> impl Strategy<Value = Spec> {
    (
        0..clients,
        0u8..4,
        0..keys,
        0..=VALUES, // VALUES itself means "absent" for cas
        0..=VALUES,
        1u64..40,
        0u64..=100,
        0u8..10,
    )
        .prop_map(
            |(client, kind, key, value, expected, duration, point_percent, fate)| Spec {
                client,
                kind,
                key,
                value,
                expected,
                duration,
                point_percent,
                fate,
            },
        )
}

const BUDGET: u64 = 10_000_000;

/// Ground truth for tiny histories: tries every order of every subset of the operations that
/// contains all completed ones, keeping real-time order, against a plain map.
fn brute_force(history: &[Event<KvInput, KvOutput>]) -> bool {
    fn extend(
        history: &[Event<KvInput, KvOutput>],
        placed: &mut Vec<usize>,
        store: &BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> bool {
        let is_placed = placed.clone();
        let done = |i: usize| is_placed.contains(&i);
        if history
            .iter()
            .enumerate()
            .all(|(i, e)| e.ret.is_none() || done(i))
        {
            return true;
        }
        for (i, event) in history.iter().enumerate() {
            if done(i) {
                continue;
            }
            // Every operation that returned before this one was called must already be placed.
            let blocked = history.iter().enumerate().any(|(j, other)| {
                !done(j) && j != i && other.ret.is_some_and(|ret| ret < event.call)
            });
            if blocked {
                continue;
            }
            let mut next = store.clone();
            let output = match &event.input {
                KvInput::Get { key } => KvOutput::Get(store.get(key).cloned()),
                KvInput::Put { key, value } => {
                    next.insert(key.clone(), value.clone());
                    KvOutput::Put
                }
                KvInput::Delete { key } => {
                    next.remove(key);
                    KvOutput::Delete
                }
                KvInput::Cas { key, expected, new } => {
                    let ok = store.get(key) == expected.as_ref();
                    if ok {
                        match new {
                            Some(new) => next.insert(key.clone(), new.clone()),
                            None => next.remove(key),
                        };
                    }
                    KvOutput::Cas(ok)
                }
            };
            if event.ret.is_some() && event.output.as_ref() != Some(&output) {
                continue;
            }
            placed.push(i);
            if extend(history, placed, &next) {
                return true;
            }
            placed.pop();
        }
        false
    }
    extend(history, &mut Vec::new(), &BTreeMap::new())
}

/// A random operation with a random (often wrong) output: (client, call, duration, unknown?,
/// input, output).
fn random_op() -> impl Strategy<Value = Event<KvInput, KvOutput>> {
    let key = (0u8..2).prop_map(|k| format!("k{k}").into_bytes());
    let value = || (0u8..3).prop_map(|v| format!("v{v}").into_bytes());
    let maybe = || prop::option::of(value());
    let input = prop_oneof![
        key.clone().prop_map(|key| KvInput::Get { key }),
        (key.clone(), value()).prop_map(|(key, value)| KvInput::Put { key, value }),
        key.clone().prop_map(|key| KvInput::Delete { key }),
        (key, maybe(), maybe()).prop_map(|(key, expected, new)| KvInput::Cas {
            key,
            expected,
            new
        }),
    ];
    (0u64..20, 0u64..8, 0u8..3, input, maybe(), any::<bool>()).prop_map(
        |(call, duration, fate, input, read, swapped)| {
            let output = match input {
                KvInput::Get { .. } => KvOutput::Get(read),
                KvInput::Put { .. } => KvOutput::Put,
                KvInput::Delete { .. } => KvOutput::Delete,
                KvInput::Cas { .. } => KvOutput::Cas(swapped),
            };
            let unknown = fate == 0;
            Event {
                client: 0,
                call,
                ret: (!unknown).then_some(call + duration),
                input,
                output: (!unknown).then_some(output),
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The checker, with all its pruning, agrees with exhaustive enumeration on tiny histories,
    /// linearizable or not.
    #[test]
    fn agrees_with_brute_force_on_tiny_histories(
        history in prop::collection::vec(random_op(), 0..7),
    ) {
        let expected = brute_force(&history);
        let got = check_kv(&history, BUDGET);
        prop_assert_eq!(
            got == Outcome::Linearizable,
            expected,
            "checker said {:?}",
            got
        );
        prop_assert!(got != Outcome::Unknown);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn generated_histories_are_linearizable_and_a_corrupt_read_is_caught(
        specs in prop::collection::vec(spec_strategy(6, 3), 1..120),
        which in any::<usize>(),
        unique in any::<bool>(),
    ) {
        let values = if unique { Values::Unique } else { Values::Few(VALUES) };
        let mut history = build_history(&specs, values);
        prop_assert_eq!(check_kv(&history, BUDGET), Outcome::Linearizable);
        if corrupt_a_read(&mut history, which) {
            match check_kv(&history, BUDGET) {
                Outcome::NotLinearizable { detail } => {
                    prop_assert!(detail.contains("never-written"), "{}", detail);
                }
                other => prop_assert!(false, "corrupt read not caught: {:?}", other),
            }
        }
    }
}

/// splitmix64, so the large history is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn large_specs(seed: u64, ops: usize, clients: u8, keys: u8) -> Vec<Spec> {
    let mut rng = Rng(seed);
    (0..ops)
        .map(|_| Spec {
            client: rng.below(u64::from(clients)) as u8,
            kind: rng.below(4) as u8,
            key: rng.below(u64::from(keys)) as u8,
            value: rng.below(u64::from(VALUES) + 1) as u8,
            expected: rng.below(u64::from(VALUES) + 1) as u8,
            duration: 1 + rng.below(60),
            point_percent: rng.below(101),
            fate: rng.below(10) as u8,
        })
        .collect()
}

/// Checks `history` (must be linearizable), then corrupts one read (must be caught).
fn check_then_corrupt(mut history: Vec<Event<KvInput, KvOutput>>, which: usize, what: &str) {
    assert_eq!(check_kv(&history, BUDGET), Outcome::Linearizable, "{what}");
    assert!(corrupt_a_read(&mut history, which), "{what}");
    match check_kv(&history, BUDGET) {
        Outcome::NotLinearizable { detail } => {
            assert!(detail.contains("never-written"), "{detail}")
        }
        other => panic!("{what}: corrupt read not caught: {other:?}"),
    }
}

#[test]
fn thousands_of_operations_over_ten_keys() {
    // As the simulator records them: fresh values, 16 clients, one op at a time each, up to 60
    // ticks per op, 20% of the operations with unknown outcome (half of those applied).
    for seed in 0..4 {
        let specs = large_specs(seed, 4000, 16, 10);
        let history = build_history(&specs, Values::Unique);
        assert_eq!(history.len(), 4000);
        check_then_corrupt(history, seed as usize * 977 + 1234, &format!("seed {seed}"));
    }
}

#[test]
fn thousands_of_operations_with_few_values_and_no_unknown_outcomes() {
    // Values repeat (3 per key), which makes many orders explain the same reads.
    for seed in 0..4 {
        let mut specs = large_specs(seed, 4000, 16, 10);
        for spec in &mut specs {
            spec.fate %= 8;
        }
        let history = build_history(&specs, Values::Few(VALUES));
        check_then_corrupt(history, seed as usize * 977 + 1234, &format!("seed {seed}"));
    }
}
