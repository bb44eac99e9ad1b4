//! Shared proptest strategies for the engine's tests.
#![allow(dead_code)]

use bytes::Bytes;
use engine::command::{
    Command, CommandOp, Compare, CompareOp, CompareTarget, Delete, Put, Session, Txn, TxnOp,
};
use proptest::prelude::*;

/// Keys from a small set, so commands collide on the same keys.
pub fn key() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        8 => prop::sample::select(vec!["a", "b", "c", "d", "e", "f"]).prop_map(|s: &'static str| Bytes::from_static(s.as_bytes())),
        1 => prop::collection::vec(any::<u8>(), 1..6).prop_map(Bytes::from),
    ]
}

pub fn value() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        3 => prop::sample::select(vec!["", "x", "y", "z"]).prop_map(|s: &'static str| Bytes::from_static(s.as_bytes())),
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(Bytes::from),
    ]
}

fn small_u64() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 0u64..6, 1 => any::<u64>()]
}

pub fn compare() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        value().prop_map(CompareTarget::Value),
        small_u64().prop_map(CompareTarget::Version),
        small_u64().prop_map(CompareTarget::CreateRevision),
        small_u64().prop_map(CompareTarget::ModRevision),
        any::<bool>().prop_map(CompareTarget::Exists),
    ];
    let cmp = prop::sample::select(vec![
        CompareOp::Equal,
        CompareOp::NotEqual,
        CompareOp::Less,
        CompareOp::Greater,
    ]);
    (key(), cmp, target).prop_map(|(key, cmp, target)| Compare { key, cmp, target })
}

pub fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        (key(), value(), any::<bool>()).prop_map(|(key, value, return_prev)| TxnOp::Put {
            key,
            value,
            return_prev
        }),
        (key(), any::<bool>()).prop_map(|(key, return_prev)| TxnOp::Delete { key, return_prev }),
        key().prop_map(|key| TxnOp::Get { key }),
    ]
}

pub fn command_op() -> impl Strategy<Value = CommandOp> {
    prop_oneof![
        4 => (key(), value(), any::<bool>(), any::<bool>()).prop_map(
            |(key, value, if_absent, return_prev)| CommandOp::Put(Put { key, value, if_absent, return_prev })
        ),
        2 => (key(), any::<bool>())
            .prop_map(|(key, return_prev)| CommandOp::Delete(Delete { key, return_prev })),
        3 => (
            prop::collection::vec(compare(), 0..3),
            prop::collection::vec(txn_op(), 0..4),
            prop::collection::vec(txn_op(), 0..4),
        )
            .prop_map(|(compares, success, failure)| CommandOp::Txn(Txn { compares, success, failure })),
    ]
}

/// Sessions from a few clients with small sequence numbers, so retries, stale sequences,
/// gaps, out-of-order arrivals, unknown clients and evictions all happen. `first_unacked` is
/// at most the sequence (the decoder's rule), often well below it.
pub fn session() -> impl Strategy<Value = Option<Session>> {
    prop_oneof![
        1 => Just(None),
        2 => (0u64..5, 1u64..12, 0u64..12).prop_map(|(client_id, sequence, back)| {
            Some(Session { client_id, sequence, first_unacked: sequence.saturating_sub(back) })
        }),
    ]
}

pub fn command() -> impl Strategy<Value = Command> {
    (session(), command_op()).prop_map(|(session, op)| Command { session, op })
}

/// One log entry as the engine would hand it to the state machine.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A command.
    Command(Command),
    /// A no-op or configuration change entry.
    Empty,
    /// Data that is not a command.
    Garbage(Vec<u8>),
}

pub fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        20 => command().prop_map(Entry::Command),
        1 => Just(Entry::Empty),
        1 => prop::collection::vec(any::<u8>(), 0..8).prop_map(Entry::Garbage),
    ]
}

/// Entries with log positions: index increases by 1..3, the term sometimes grows.
pub fn log() -> impl Strategy<Value = Vec<(u64, u64, Entry)>> {
    prop::collection::vec((1u64..3, prop::bool::weighted(0.05), entry()), 0..120).prop_map(|v| {
        let (mut index, mut term) = (0, 1);
        v.into_iter()
            .map(|(step, bump, e)| {
                index += step;
                term += u64::from(bump);
                (index, term, e)
            })
            .collect()
    })
}

/// `n` proptest cases, or `PROPTEST_CASES` from the environment for longer local runs
/// (an explicit `with_cases` would otherwise ignore it).
pub fn cases(n: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n)
}
