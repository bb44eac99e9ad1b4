//! The partition state machine: metadata, revisions, transactions, sessions, ranges.

use bytes::Bytes;
use engine::command::{Command, CommandOp, Compare, CompareOp, CompareTarget, Put, Txn, TxnOp};
use engine::state_machine::{
    ApplyError, Config, KeyValue, OpResult, Response, ResponseOp, StateMachine,
};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A state machine with a running log index.
struct Log {
    sm: StateMachine,
    index: u64,
}

impl Log {
    fn new(sessions_max: usize) -> Log {
        Log::with_results_max(sessions_max, 4096)
    }
    fn with_results_max(sessions_max: usize, session_results_max: usize) -> Log {
        Log {
            sm: StateMachine::new(Config {
                partition_id: 1,
                sessions_max,
                session_results_max,
                history_revisions: 0,
                history_bytes_max: 0,
            }),
            index: 0,
        }
    }
    fn apply(&mut self, cmd: Command) -> Result<Response, ApplyError> {
        self.index += 1;
        self.sm.apply(self.index, 1, &cmd)
    }
}

fn put_prev(key: &str, value: &str) -> Command {
    Command {
        session: None,
        op: CommandOp::Put(Put {
            key: b(key),
            value: b(value),
            if_absent: false,
            return_prev: true,
        }),
    }
}

fn cmp(key: &str, cmp: CompareOp, target: CompareTarget) -> Compare {
    Compare {
        key: b(key),
        cmp,
        target,
    }
}

fn txn(compares: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Command {
    Command {
        session: None,
        op: CommandOp::Txn(Txn {
            compares,
            success,
            failure,
        }),
    }
}

fn tput(key: &str, value: &str) -> TxnOp {
    TxnOp::Put {
        key: b(key),
        value: b(value),
        return_prev: false,
    }
}

#[test]
fn metadata_follows_etcd() {
    let mut l = Log::new(8);
    let r = l.apply(put_prev("a", "1")).unwrap();
    assert_eq!(
        r,
        Response {
            revision: 1,
            op: ResponseOp::Put {
                written: true,
                prev: None
            }
        }
    );
    l.apply(Command::put("b", "x")).unwrap();
    let r = l.apply(put_prev("a", "2")).unwrap();
    assert_eq!(r.revision, 3);
    let ResponseOp::Put {
        prev: Some(prev), ..
    } = r.op
    else {
        panic!("no prev")
    };
    assert_eq!(
        prev,
        KeyValue {
            value: b("1"),
            create_revision: 1,
            mod_revision: 1,
            version: 1
        }
    );
    assert_eq!(
        l.sm.get(b"a"),
        Some(&KeyValue {
            value: b("2"),
            create_revision: 1,
            mod_revision: 3,
            version: 2
        })
    );
    // Delete then create: version starts over, create revision is new.
    let r = l.apply(Command::delete("a")).unwrap();
    assert_eq!(r.revision, 4);
    assert_eq!(l.sm.get(b"a"), None);
    l.apply(Command::put("a", "3")).unwrap();
    assert_eq!(
        l.sm.get(b"a"),
        Some(&KeyValue {
            value: b("3"),
            create_revision: 5,
            mod_revision: 5,
            version: 1
        })
    );
    assert_eq!(l.sm.revision(), 5);
    assert_eq!(l.sm.applied_index(), 5);
    // "a" = "3" and "b" = "x".
    assert_eq!(l.sm.data_bytes(), 4);
    assert_eq!(l.sm.check_invariants(), Ok(()));
}

#[test]
fn no_op_writes_do_not_bump_the_revision() {
    let mut l = Log::new(8);
    l.apply(Command::put("a", "1")).unwrap();
    // Delete of a missing key.
    let r = l.apply(Command::delete("zz")).unwrap();
    assert_eq!(
        r,
        Response {
            revision: 1,
            op: ResponseOp::Delete {
                deleted: false,
                prev: None
            }
        }
    );
    // Put-if-absent on an existing key: not written, returns the existing value if asked.
    let r = l
        .apply(Command {
            session: None,
            op: CommandOp::Put(Put {
                key: b("a"),
                value: b("other"),
                if_absent: true,
                return_prev: true,
            }),
        })
        .unwrap();
    assert_eq!(r.revision, 1);
    assert!(matches!(
        r.op,
        ResponseOp::Put {
            written: false,
            prev: Some(KeyValue { ref value, .. })
        } if value == "1"
    ));
    assert_eq!(l.sm.get(b"a").unwrap().value, b("1"));
    // Put-if-absent on a missing key writes.
    let r = l
        .apply(Command {
            session: None,
            op: CommandOp::Put(Put {
                key: b("new"),
                value: b("v"),
                if_absent: true,
                return_prev: false,
            }),
        })
        .unwrap();
    assert_eq!(r.revision, 2);
    // A txn with only gets.
    let r = l
        .apply(txn(vec![], vec![TxnOp::Get { key: b("a") }], vec![]))
        .unwrap();
    assert_eq!(r.revision, 2);
    assert_eq!(l.sm.revision(), 2);
}

#[test]
fn txn_is_one_revision_and_atomic() {
    let mut l = Log::new(8);
    l.apply(Command::put("a", "1")).unwrap(); // rev 1
    l.apply(Command::put("b", "1")).unwrap(); // rev 2
    let before = l.sm.clone();

    // Failing compare, empty failure branch: nothing changes but the applied index.
    let r = l
        .apply(txn(
            vec![
                cmp("a", CompareOp::Equal, CompareTarget::Value(b("1"))),
                cmp("b", CompareOp::Equal, CompareTarget::Value(b("WRONG"))),
            ],
            vec![tput("a", "2"), tput("c", "2")],
            vec![],
        ))
        .unwrap();
    assert_eq!(
        r,
        Response {
            revision: 2,
            op: ResponseOp::Txn {
                succeeded: false,
                results: vec![]
            }
        }
    );
    assert!(before.iter().eq(l.sm.iter()));
    assert_eq!(l.sm.revision(), 2);

    // All compares hold: several writes, one revision, ops see earlier ops.
    let r = l
        .apply(txn(
            vec![
                cmp("a", CompareOp::Equal, CompareTarget::Value(b("1"))),
                cmp("a", CompareOp::Equal, CompareTarget::Version(1)),
                cmp("a", CompareOp::Less, CompareTarget::ModRevision(2)),
                cmp("b", CompareOp::Greater, CompareTarget::CreateRevision(1)),
                cmp("c", CompareOp::Equal, CompareTarget::Exists(false)),
                cmp("c", CompareOp::Equal, CompareTarget::Version(0)),
            ],
            vec![
                tput("a", "2"),
                tput("c", "2"),
                TxnOp::Delete {
                    key: b("b"),
                    return_prev: true,
                },
                TxnOp::Get { key: b("c") },
            ],
            vec![tput("failure", "ran")],
        ))
        .unwrap();
    assert_eq!(r.revision, 3);
    let ResponseOp::Txn { succeeded, results } = r.op else {
        panic!()
    };
    assert!(succeeded);
    assert_eq!(results.len(), 4);
    assert!(
        matches!(&results[2], OpResult::Delete { deleted: true, prev: Some(kv) } if kv.value == "1")
    );
    assert!(
        matches!(&results[3], OpResult::Get { kv: Some(kv) } if kv.value == "2" && kv.create_revision == 3)
    );
    assert_eq!(l.sm.get(b"a").unwrap().mod_revision, 3);
    assert_eq!(l.sm.get(b"c").unwrap().mod_revision, 3);
    assert_eq!(l.sm.get(b"b"), None);
    assert_eq!(l.sm.get(b"failure"), None);

    // Value compare on a missing key is false whatever the operator.
    for op in [
        CompareOp::Equal,
        CompareOp::NotEqual,
        CompareOp::Less,
        CompareOp::Greater,
    ] {
        let r = l
            .apply(txn(
                vec![cmp("missing", op, CompareTarget::Value(b("x")))],
                vec![],
                vec![],
            ))
            .unwrap();
        assert!(matches!(
            r.op,
            ResponseOp::Txn {
                succeeded: false,
                ..
            }
        ));
    }
}

fn with_session(cmd: Command, client: u64, seq: u64, first_unacked: u64) -> Command {
    cmd.with_session(client, seq, first_unacked)
}

/// The cached sequences of `client`'s session, ascending.
fn cached(l: &Log, client: u64) -> Vec<u64> {
    l.sm.sessions()
        .get(client)
        .unwrap()
        .results()
        .map(|(sequence, _)| sequence)
        .collect()
}

#[test]
fn retry_returns_the_cached_result_without_reapplying() {
    let mut l = Log::new(8);
    let first = l
        .apply(with_session(put_prev("k", "v1"), 42, 1, 1))
        .unwrap();
    let rev = l.sm.revision();
    let state = l.sm.get(b"k").cloned();
    // The same sequence again (even with other content) returns the first result.
    let again = l
        .apply(with_session(put_prev("k", "DIFFERENT"), 42, 1, 1))
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(l.sm.revision(), rev);
    assert_eq!(l.sm.get(b"k").cloned(), state);
    assert_eq!(l.sm.applied_index(), 2);
    assert_eq!(l.sm.sessions().get(42).unwrap().last_index, 2);
    l.sm.check_invariants().unwrap();
}

#[test]
fn unknown_client_opens_a_session_at_any_sequence() {
    // Sequences are global across partitions: a client's first write to this partition may
    // have any sequence number.
    let mut l = Log::new(8);
    let r = l
        .apply(with_session(Command::put("k", "v"), 7, 900, 850))
        .unwrap();
    assert_eq!(r.revision, 1);
    assert_eq!(l.sm.get(b"k").unwrap().value, b("v"));
    let rec = l.sm.sessions().get(7).unwrap();
    assert_eq!(rec.first_unacked, 850);
    assert_eq!(rec.last_index, 1);
    assert_eq!(cached(&l, 7), vec![900]);
    l.sm.check_invariants().unwrap();
}

#[test]
fn first_unacked_is_raised_and_drops_answered_results() {
    let mut l = Log::new(8);
    for seq in [3, 5, 8] {
        l.apply(with_session(Command::put("k", "v"), 1, seq, 1))
            .unwrap();
    }
    assert_eq!(cached(&l, 1), vec![3, 5, 8]);
    // The client has the answers to everything below 6 now.
    l.apply(with_session(Command::put("j", "v"), 1, 9, 6))
        .unwrap();
    assert_eq!(cached(&l, 1), vec![8, 9]);
    assert_eq!(l.sm.sessions().get(1).unwrap().first_unacked, 6);
    // A lower first_unacked on a later command (reordered) never lowers it.
    l.apply(with_session(Command::put("j", "w"), 1, 10, 2))
        .unwrap();
    assert_eq!(l.sm.sessions().get(1).unwrap().first_unacked, 6);
    assert_eq!(cached(&l, 1), vec![8, 9, 10]);
    l.sm.check_invariants().unwrap();
}

#[test]
fn sequence_below_first_unacked_is_stale_and_not_applied() {
    let mut l = Log::new(8);
    l.apply(with_session(put_prev("k", "v1"), 42, 1, 1))
        .unwrap();
    l.apply(with_session(put_prev("k", "v2"), 42, 2, 2))
        .unwrap();
    let rev = l.sm.revision();
    // A stray duplicate of 1, delivered after the client acknowledged it.
    assert_eq!(
        l.apply(with_session(put_prev("k", "v1"), 42, 1, 1)),
        Err(ApplyError::SessionSequenceStale {
            client_id: 42,
            sequence: 1,
            first_unacked: 2
        })
    );
    assert_eq!(l.sm.get(b"k").unwrap().value, b("v2"));
    assert_eq!(l.sm.revision(), rev);
    // The refused entry is consumed and counts as the session's last command.
    assert_eq!(l.sm.applied_index(), 3);
    assert_eq!(l.sm.sessions().get(42).unwrap().last_index, 3);
    // Never applied before, but below first_unacked: refused all the same (the client says it
    // has that answer, so this copy is not the one it waits for).
    l.apply(with_session(Command::put("z", "1"), 42, 20, 20))
        .unwrap();
    assert!(matches!(
        l.apply(with_session(Command::put("y", "1"), 42, 19, 19)),
        Err(ApplyError::SessionSequenceStale { sequence: 19, .. })
    ));
    assert_eq!(l.sm.get(b"y"), None);
    l.sm.check_invariants().unwrap();
}

#[test]
fn pipelined_writes_arrive_out_of_order() {
    let mut l = Log::new(8);
    // 5 applied first, then 3 arrives for the first time: applied.
    let five = l.apply(with_session(put_prev("a", "5"), 9, 5, 1)).unwrap();
    let three = l.apply(with_session(put_prev("b", "3"), 9, 3, 1)).unwrap();
    assert_eq!(five.revision, 1);
    assert_eq!(three.revision, 2);
    assert_eq!(l.sm.get(b"b").unwrap().value, b("3"));
    // 5 retried (after a leader change): the cached result, nothing re-applied.
    let retry = l.apply(with_session(put_prev("a", "5"), 9, 5, 1)).unwrap();
    assert_eq!(retry, five);
    assert_eq!(l.sm.revision(), 2);
    assert_eq!(l.sm.get(b"a").unwrap().version, 1);
    // 3 retried too: cached.
    assert_eq!(
        l.apply(with_session(put_prev("b", "3"), 9, 3, 1)).unwrap(),
        three
    );
    // 7 is new; then 4 arrives for the first time, between cached sequences: applied.
    l.apply(with_session(put_prev("a", "7"), 9, 7, 3)).unwrap();
    l.apply(with_session(put_prev("c", "4"), 9, 4, 3)).unwrap();
    assert_eq!(l.sm.revision(), 4);
    assert_eq!(cached(&l, 9), vec![3, 4, 5, 7]);
    // 6 (another partition's write in the client's counter) never came here.
    l.sm.check_invariants().unwrap();
}

#[test]
fn a_long_pipeline_is_cached_then_released() {
    let mut l = Log::new(8);
    // 1,000 writes in flight, none answered yet, in two interleaved streams.
    for seq in (1..=1000u64).rev().step_by(2).chain((1..=1000).step_by(2)) {
        l.apply(with_session(Command::put("k", seq.to_string()), 3, seq, 1))
            .unwrap();
    }
    assert_eq!(cached(&l, 3), (1..=1000).collect::<Vec<_>>());
    assert_eq!(l.sm.revision(), 1000);
    let answer_of_500 =
        l.sm.sessions()
            .get(3)
            .unwrap()
            .result(500)
            .cloned()
            .unwrap();
    assert_eq!(
        l.apply(with_session(Command::put("k", "500"), 3, 500, 1)),
        Ok(answer_of_500)
    );
    // The client has every answer up to 990: all but the last ten are released.
    l.apply(with_session(Command::put("k", "x"), 3, 1001, 991))
        .unwrap();
    assert_eq!(cached(&l, 3), (991..=1001).collect::<Vec<_>>());
    assert!(matches!(
        l.apply(with_session(Command::put("k", "500"), 3, 500, 1)),
        Err(ApplyError::SessionSequenceStale { .. })
    ));
    assert_eq!(l.sm.revision(), 1001);
    l.sm.check_invariants().unwrap();
}

#[test]
fn cached_results_are_bounded_and_the_dropped_one_is_refused() {
    let mut l = Log::with_results_max(8, 3);
    for seq in [10, 12, 14] {
        l.apply(with_session(Command::put("k", "v"), 1, seq, 1))
            .unwrap();
    }
    assert_eq!(cached(&l, 1), vec![10, 12, 14]);
    // A fourth result drops the lowest, 10, and raises first_unacked past it.
    l.apply(with_session(Command::put("k", "v"), 1, 16, 1))
        .unwrap();
    assert_eq!(cached(&l, 1), vec![12, 14, 16]);
    assert_eq!(l.sm.sessions().get(1).unwrap().first_unacked, 11);
    let rev = l.sm.revision();
    // A late retry of 10 is refused, not applied twice.
    assert_eq!(
        l.apply(with_session(Command::put("k", "v"), 1, 10, 1)),
        Err(ApplyError::SessionSequenceStale {
            client_id: 1,
            sequence: 10,
            first_unacked: 11
        })
    );
    assert_eq!(l.sm.revision(), rev);
    // 11 was never applied and is above first_unacked: a first arrival is still applied.
    l.apply(with_session(Command::put("k", "v"), 1, 11, 1))
        .unwrap();
    assert_eq!(l.sm.revision(), rev + 1);
    assert_eq!(cached(&l, 1), vec![12, 14, 16]);
    assert_eq!(l.sm.sessions().get(1).unwrap().first_unacked, 12);
    // ... and since its result was the lowest, it was the one dropped.
    assert!(matches!(
        l.apply(with_session(Command::put("k", "v"), 1, 11, 1)),
        Err(ApplyError::SessionSequenceStale { sequence: 11, .. })
    ));
    assert_eq!(l.sm.revision(), rev + 1);
    l.sm.check_invariants().unwrap();
}

#[test]
fn eviction_is_least_recently_used_by_log_index() {
    let mut l = Log::new(2);
    l.apply(with_session(Command::put("a", "1"), 1, 1, 1))
        .unwrap(); // index 1
    l.apply(with_session(Command::put("b", "1"), 2, 1, 1))
        .unwrap(); // index 2
                   // Client 1 retries (cache hit) at index 3: client 2 is now the least recently used.
    l.apply(with_session(Command::put("a", "1"), 1, 1, 1))
        .unwrap();
    l.apply(with_session(Command::put("c", "1"), 3, 1, 1))
        .unwrap(); // index 4, evicts 2
    assert!(l.sm.sessions().get(2).is_none());
    assert!(l.sm.sessions().get(1).is_some());
    assert!(l.sm.sessions().get(3).is_some());
    assert_eq!(l.sm.sessions().len(), 2);
    // The documented residual risk: client 2's session is gone, so a retry of its applied
    // write is indistinguishable from a new client's write and is applied again.
    let r = l
        .apply(with_session(Command::put("b", "1"), 2, 1, 1))
        .unwrap();
    assert_eq!(r.revision, 4);
    assert_eq!(l.sm.get(b"b").unwrap().version, 2);
    // Opening it evicted client 1 (last command at index 3), not client 3 (index 4).
    assert!(l.sm.sessions().get(1).is_none());
    assert!(l.sm.sessions().get(3).is_some());
    l.sm.check_invariants().unwrap();
}

#[test]
fn entries_must_come_in_order() {
    let mut sm = StateMachine::new(Config::new(3));
    sm.apply(5, 2, &Command::put("a", "1")).unwrap();
    let before = sm.clone();
    assert_eq!(
        sm.apply(5, 2, &Command::put("a", "2")),
        Err(ApplyError::IndexNotAfterApplied {
            index: 5,
            applied_index: 5
        })
    );
    assert_eq!(
        sm.apply(6, 1, &Command::put("a", "2")),
        Err(ApplyError::TermRegressed {
            term: 1,
            applied_term: 2
        })
    );
    assert_eq!(
        sm.advance_applied(4, 2),
        Err(ApplyError::IndexNotAfterApplied {
            index: 4,
            applied_index: 5
        })
    );
    assert_eq!(sm, before);
    sm.advance_applied(6, 3).unwrap();
    assert_eq!((sm.applied_index(), sm.applied_term()), (6, 3));
}

#[test]
fn malformed_entry_is_consumed_as_a_no_op() {
    let mut sm = StateMachine::new(Config::new(3));
    sm.apply_entry(1, 1, &Command::put("a", "1").encode())
        .unwrap();
    let r = sm.apply_entry(2, 1, &Bytes::from_static(&[9, 9, 9]));
    assert!(matches!(r, Err(ApplyError::Malformed(_))));
    assert_eq!(sm.applied_index(), 2);
    assert_eq!(sm.revision(), 1);
    assert_eq!(sm.len(), 1);
}

fn keys(r: &engine::state_machine::RangeResult) -> Vec<&[u8]> {
    r.kvs.iter().map(|(k, _)| k.as_ref()).collect()
}

#[test]
fn range_semantics() {
    let mut l = Log::new(8);
    for k in ["a", "b", "ba", "c", "d"] {
        l.apply(Command::put(k, "value")).unwrap();
    }
    let sm = &l.sm;
    // Empty end: the single key.
    assert_eq!(
        keys(&sm.range(b"b", b"", 0, false, usize::MAX)),
        vec![b"b" as &[u8]]
    );
    assert!(sm.range(b"bb", b"", 0, false, usize::MAX).kvs.is_empty());
    // [start, end)
    assert_eq!(
        keys(&sm.range(b"b", b"c", 0, false, usize::MAX)),
        vec![b"b" as &[u8], b"ba"]
    );
    // "\0": to the end of the keyspace; with an empty start: everything.
    assert_eq!(
        keys(&sm.range(b"c", b"\0", 0, false, usize::MAX)),
        vec![b"c" as &[u8], b"d"]
    );
    assert_eq!(sm.range(b"", b"\0", 0, false, usize::MAX).kvs.len(), 5);
    // end <= start: empty, not a panic.
    assert!(sm.range(b"d", b"a", 0, false, usize::MAX).kvs.is_empty());
    assert!(sm.range(b"c", b"c", 0, false, usize::MAX).kvs.is_empty());
    // Limit and continuation.
    let page = sm.range(b"a", b"\0", 2, false, usize::MAX);
    assert_eq!(keys(&page), vec![b"a" as &[u8], b"b"]);
    assert!(page.more);
    assert_eq!(page.next_key, Some(b("ba")));
    let page2 = sm.range(page.next_key.as_ref().unwrap(), b"\0", 2, false, usize::MAX);
    assert_eq!(keys(&page2), vec![b"ba" as &[u8], b"c"]);
    let last = sm.range(b"d", b"\0", 2, false, usize::MAX);
    assert_eq!(keys(&last), vec![b"d" as &[u8]]);
    assert!(!last.more);
    assert_eq!(last.next_key, None);
    // Exactly `limit` keys left: no more.
    let exact = sm.range(b"c", b"\0", 2, false, usize::MAX);
    assert!(!exact.more);
    // Keys only: metadata kept, values empty.
    let ko = sm.range(b"a", b"", 0, true, usize::MAX);
    assert_eq!(ko.kvs[0].1.value, Bytes::new());
    assert_eq!(ko.kvs[0].1.create_revision, 1);
}

/// Review issue 10, finding 2: a page is bounded by bytes as well as by keys, so a range of
/// large values never builds a reply over the frame limit; the first key-value is always
/// returned, so paging makes progress.
#[test]
fn range_stops_at_the_byte_budget() {
    use engine::state_machine::RANGE_ENTRY_OVERHEAD_BYTES as O;
    let mut l = Log::new(8);
    for k in ["a", "b", "c", "d", "e"] {
        l.apply(Command::put(k, vec![b'v'; 1000])).unwrap();
    }
    let sm = &l.sm;
    let entry = 1 + 1000 + O;
    let page = sm.range(b"a", b"\0", 0, false, 2 * entry);
    assert_eq!(keys(&page), vec![b"a" as &[u8], b"b"]);
    assert!(page.more);
    assert_eq!(page.next_key, Some(b("c")));
    let page = sm.range(b"a", b"\0", 0, false, 2 * entry + 1000);
    assert_eq!(keys(&page).len(), 2, "a third entry does not fit");
    // The key limit still applies under the budget.
    let page = sm.range(b"a", b"\0", 1, false, usize::MAX);
    assert_eq!(keys(&page), vec![b"a" as &[u8]]);
    // One key-value over the budget on its own: returned anyway (progress).
    let page = sm.range(b"c", b"\0", 0, false, 0);
    assert_eq!(keys(&page), vec![b"c" as &[u8]]);
    assert_eq!(page.next_key, Some(b("d")));
    // Keys only: values do not count.
    let page = sm.range(b"a", b"\0", 0, true, 5 * (1 + O));
    assert_eq!(keys(&page).len(), 5);
    assert!(!page.more);
    // Exactly the budget: everything, no more.
    let page = sm.range(b"a", b"\0", 0, false, 5 * entry);
    assert_eq!(keys(&page).len(), 5);
    assert!(!page.more);
}

#[test]
fn apply_stores_values_without_copying_and_copies_new_keys() {
    let mut sm = StateMachine::new(Config::new(1));
    let entry = Command::put("key", vec![7u8; 128]).encode();
    sm.apply_entry(1, 1, &entry).unwrap();
    let inside = |p: *const u8| {
        (entry.as_ptr() as usize..entry.as_ptr() as usize + entry.len()).contains(&(p as usize))
    };
    let (k, kv) = sm.iter().next().unwrap();
    assert!(inside(kv.value.as_ptr()), "value was copied");
    assert!(!inside(k.as_ptr()), "key still points into its first entry");
    // An overwrite keeps the stored key and takes the new entry's value.
    let entry2 = Command::put("key", vec![8u8; 128]).encode();
    sm.apply_entry(2, 1, &entry2).unwrap();
    let kv = sm.get(b"key").unwrap();
    let in2 = entry2.as_ptr() as usize..entry2.as_ptr() as usize + entry2.len();
    assert!(in2.contains(&(kv.value.as_ptr() as usize)));
}
