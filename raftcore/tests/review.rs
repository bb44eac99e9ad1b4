//! Scenario tests from the safety review of raftcore, each naming the paper / thesis section of
//! the rule it checks. Persistence is simulated by hand: a test decides exactly which part of a
//! Ready reached the disk before a crash, within what the Ready contract (`raftcore::ready`)
//! allows.

use bytes::Bytes;
use raftcore::{ConfState, Config, Entry, EntryKind, Message, MessageKind, RawNode, RestartState};

fn cfg(id: u64) -> Config {
    let mut c = Config::new(id);
    c.seed = id * 7 + 1;
    c
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Normal,
        data: Bytes::from_static(b"x"),
    }
}

#[test]
fn thesis_3_8_torn_write_of_entries_before_hard_state_restarts() {
    // The Ready contract writes entries, then the hard state, as one ordered write; a crash
    // may keep a prefix of the entries and not the hard state (the simulator's torn write does
    // exactly this). A follower that first hears of term 2 through an Append carrying two
    // term-2 entries gets a Ready with both entries and hard state term 2. If only the first
    // entry reaches the disk, the durable log holds a term-2 entry under a term-1 hard state.
    // That state is legal under the contract, so the node must restart from it (adopting the
    // log's term, with no vote: a vote in term 2 would have been durable before it was sent,
    // thesis §3.8), not refuse it as corrupt.
    let conf = ConfState::with_voters(&[1, 2, 3]);
    let boot = RestartState::bootstrap(conf, Bytes::new());
    let mut n = RawNode::new(cfg(2), boot.clone()).unwrap();
    let mut m = Message::new(MessageKind::Append, 1, 2, 2);
    m.index = 1;
    m.log_term = 1;
    m.commit = 1;
    m.entries = vec![entry(2, 2), entry(3, 2)];
    n.step(m);
    let rd = n.ready();
    assert_eq!(rd.entries.len(), 2);
    assert_eq!(rd.hard_state.map(|h| h.term), Some(2));
    assert!(rd.persisted_messages.iter().all(|m| m.index <= 3));
    // Crash: the first entry is durable, the second and the hard state are not.
    let mut durable = boot;
    durable.entries = vec![rd.entries[0].clone()];
    let r = RawNode::new(cfg(2), durable);
    let mut n = r.expect("a torn write allowed by the Ready contract must restart");
    assert_eq!(
        n.term(),
        2,
        "term is at least the last durable entry's term"
    );
    assert_eq!(n.hard_state().vote, 0, "no vote was durable in term 2");
    assert_eq!(n.last_index(), 2);
    n.check_invariants().unwrap();
    // The raised term is persisted with the next Ready.
    let rd = n.ready();
    assert_eq!(rd.hard_state.map(|h| (h.term, h.vote)), Some((2, 0)));
}
