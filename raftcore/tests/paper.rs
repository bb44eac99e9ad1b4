//! Scenario tests, each tied to the section of the Raft paper ("paper", Ongaro & Ousterhout
//! 2014) or thesis ("thesis", Ongaro 2014) whose rule it checks — in the manner of etcd's
//! `raft_paper_test.go`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use raftcore::{
    ConfChange, ConfChangeStep, ConfState, Config, Entry, EntryKind, Error, HardState, Message,
    MessageKind, ProgressState, RawNode, ReadFailReason, ReadFailure, ReadState, Ready,
    RestartState, Role,
};

/// A tiny in-memory cluster: persistence is immediate (each Ready is durable as soon as it is
/// handled), messages go through a queue that tests can filter.
struct Cluster {
    nodes: BTreeMap<u64, RawNode>,
    queue: VecDeque<Message>,
    /// Nodes cut off from everyone.
    isolated: BTreeSet<u64>,
    /// Every message ever sent (for assertions).
    sent: Vec<Message>,
    applied: BTreeMap<u64, Vec<Entry>>,
    /// When false, Readies are collected but not made durable (see `pending`).
    auto_persist: bool,
    pending: Vec<(u64, Ready)>,
    /// Read outcomes handed out by `handle_ready`: (node, outcome).
    read_states: Vec<(u64, ReadState)>,
    read_failures: Vec<(u64, ReadFailure)>,
}

fn cfg(id: u64) -> Config {
    let mut c = Config::new(id);
    c.seed = id * 7 + 1;
    c
}

impl Cluster {
    fn new(voters: &[u64]) -> Self {
        Self::with(voters, cfg)
    }

    fn with(voters: &[u64], mk: impl Fn(u64) -> Config) -> Self {
        let conf = ConfState::with_voters(voters);
        let mut nodes = BTreeMap::new();
        for &v in voters {
            let st = RestartState::bootstrap(conf.clone(), Bytes::new());
            nodes.insert(v, RawNode::new(mk(v), st).unwrap());
        }
        Cluster {
            nodes,
            queue: VecDeque::new(),
            isolated: BTreeSet::new(),
            sent: Vec::new(),
            applied: BTreeMap::new(),
            auto_persist: true,
            pending: Vec::new(),
            read_states: Vec::new(),
            read_failures: Vec::new(),
        }
    }

    fn add_empty(&mut self, id: u64) {
        self.nodes
            .insert(id, RawNode::new(cfg(id), RestartState::default()).unwrap());
    }

    fn node(&mut self, id: u64) -> &mut RawNode {
        self.nodes.get_mut(&id).unwrap()
    }

    fn post(&mut self, m: Message) {
        self.sent.push(m.clone());
        if self.isolated.contains(&m.from) || self.isolated.contains(&m.to) {
            return;
        }
        self.queue.push_back(m);
    }

    fn handle_ready(&mut self, id: u64) {
        let rd = self.node(id).ready();
        for m in rd.messages.clone() {
            self.post(m);
        }
        self.read_states
            .extend(rd.read_states.iter().map(|r| (id, *r)));
        self.read_failures
            .extend(rd.read_failures.iter().map(|r| (id, *r)));
        if self.auto_persist {
            self.finish_ready(id, rd);
        } else {
            self.pending.push((id, rd));
        }
    }

    fn finish_ready(&mut self, id: u64, rd: Ready) {
        for m in rd.persisted_messages {
            self.post(m);
        }
        self.node(id).on_persisted(rd.number).unwrap();
        if let Some(last) = rd.committed_entries.last().map(|e| e.index) {
            self.applied
                .entry(id)
                .or_default()
                .extend(rd.committed_entries.iter().cloned());
            self.node(id).on_applied(last);
        }
    }

    /// Runs until no node has work and no message is queued.
    fn stabilize(&mut self) {
        for _ in 0..10_000 {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            let mut any = false;
            for id in ids {
                if self.nodes[&id].has_ready() {
                    any = true;
                    self.handle_ready(id);
                }
            }
            if let Some(m) = self.queue.pop_front() {
                any = true;
                if let Some(n) = self.nodes.get_mut(&m.to) {
                    n.step(m);
                }
            }
            if !any {
                return;
            }
        }
        panic!("cluster did not stabilize");
    }

    fn tick_all(&mut self, n: u32) {
        for _ in 0..n {
            for node in self.nodes.values_mut() {
                node.tick();
            }
            self.stabilize();
        }
    }

    fn elect(&mut self, id: u64) {
        self.node(id).campaign_now();
        self.stabilize();
        assert_eq!(
            self.nodes[&id].role(),
            Role::Leader,
            "node {id} should lead"
        );
    }

    fn leaders(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.role() == Role::Leader)
            .map(|n| n.id())
            .collect()
    }

    fn propose(&mut self, id: u64, data: &[u8]) -> u64 {
        let p = self
            .node(id)
            .propose(&[Bytes::copy_from_slice(data)])
            .unwrap();
        self.stabilize();
        p.last_index
    }
}

// ---------------------------------------------------------------- election (paper §5.2)

#[test]
fn paper_5_2_randomized_election_timeout_elects_one_leader() {
    // §5.2: followers start elections after a randomized timeout; one leader emerges.
    let mut c = Cluster::new(&[1, 2, 3]);
    c.tick_all(40);
    assert_eq!(c.leaders().len(), 1);
    let l = c.leaders()[0];
    let term = c.nodes[&l].term();
    for n in c.nodes.values() {
        assert_eq!(n.term(), term);
        assert_eq!(n.leader(), l);
    }
}

#[test]
fn paper_5_2_election_timeout_is_randomized_in_min_to_twice_min() {
    // §5.2: "election timeouts are chosen randomly from a fixed interval".
    let mut firsts = BTreeSet::new();
    for seed in 0..40 {
        let mut cf = cfg(1);
        cf.seed = seed;
        let conf = ConfState::with_voters(&[1, 2, 3]);
        let mut n = RawNode::new(cf, RestartState::bootstrap(conf, Bytes::new())).unwrap();
        let mut t = 0;
        while n.role() == Role::Follower {
            n.tick();
            t += 1;
            assert!(t < 20, "timeout must be < 2 * election_ticks_min");
        }
        assert!(t >= 10, "timeout must be >= election_ticks_min");
        firsts.insert(t);
    }
    assert!(
        firsts.len() > 3,
        "timeouts should vary with the seed: {firsts:?}"
    );
}

#[test]
fn paper_5_2_one_vote_per_term() {
    // §5.2: "each server will vote for at most one candidate in a given term".
    let mut c = Cluster::new(&[1, 2, 3]);
    let mut v = Message::new(MessageKind::Vote, 2, 1, 5);
    v.index = 1;
    v.log_term = 1;
    c.node(1).step(v.clone());
    let rd = c.node(1).ready();
    assert_eq!(rd.hard_state.unwrap().vote, 2);
    assert!(
        rd.messages.is_empty(),
        "a grant is never sent before it is durable"
    );
    assert_eq!(rd.persisted_messages.len(), 1);
    assert!(!rd.persisted_messages[0].reject);
    c.node(1).on_persisted(rd.number).unwrap();
    let mut v3 = v.clone();
    v3.from = 3;
    c.node(1).step(v3);
    let rd = c.node(1).ready();
    let resp: Vec<_> = rd.messages.iter().chain(&rd.persisted_messages).collect();
    assert_eq!(resp.len(), 1);
    assert!(
        resp[0].reject,
        "second candidate in the same term is refused"
    );
}

#[test]
fn paper_5_4_1_vote_refused_to_candidate_with_stale_log() {
    // §5.4.1: the voter denies its vote if its own log is more up to date.
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"x");
    let last = c.nodes[&2].last_index();
    let term = c.nodes[&2].term();
    // Candidate 3 claims a log one entry shorter than 2's at the same last term.
    let mut v = Message::new(MessageKind::Vote, 3, 2, term + 1);
    v.index = last - 1;
    v.log_term = term;
    v.context = raftcore::node::CONTEXT_TRANSFER; // skip the lease check, test only §5.4.1
    c.node(2).step(v.clone());
    let rd = c.node(2).ready();
    let resp: Vec<_> = rd.messages.iter().chain(&rd.persisted_messages).collect();
    assert!(
        resp.iter().all(|m| m.reject),
        "stale candidate must be refused"
    );
    // Same length: granted.
    v.index = last;
    v.term = term + 2;
    c.node(2).step(v);
    let rd = c.node(2).ready();
    assert!(rd.persisted_messages.iter().any(|m| !m.reject));
}

#[test]
fn thesis_9_6_prevote_partitioned_node_does_not_disrupt_leader() {
    // §9.6: a node that was partitioned runs Pre-Vote, which fails while a leader is healthy,
    // so it never bumps its term and never deposes the leader when it rejoins.
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let term = c.nodes[&1].term();
    c.isolated.insert(3);
    c.tick_all(100);
    assert_eq!(c.nodes[&3].term(), term, "pre-vote must not raise the term");
    c.isolated.clear();
    c.tick_all(30);
    assert_eq!(c.leaders(), vec![1]);
    assert_eq!(c.nodes[&1].term(), term);
    assert_eq!(c.nodes[&3].leader(), 1);
}

#[test]
fn thesis_6_2_check_quorum_leader_steps_down_without_quorum() {
    // CheckQuorum (thesis §6.2): a leader that has not heard from a majority within an election
    // timeout steps down.
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.isolated.insert(1);
    c.tick_all(25);
    assert_ne!(c.nodes[&1].role(), Role::Leader);
}

#[test]
fn thesis_4_2_3_follower_with_recent_leader_ignores_votes() {
    // §4.2.3: a server that heard from a leader within the minimum election timeout neither
    // grants a vote nor adopts the higher term.
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let term = c.nodes[&2].term();
    let mut v = Message::new(MessageKind::Vote, 3, 2, term + 10);
    v.index = 100;
    v.log_term = term + 5;
    c.node(2).step(v);
    assert_eq!(c.nodes[&2].term(), term);
    let rd = c.node(2).ready();
    assert!(rd.messages.is_empty() && rd.persisted_messages.is_empty());
}

// ---------------------------------------------------------------- replication (§5.3)

#[test]
fn paper_5_3_leader_appends_noop_on_election() {
    // Paper §8 / thesis §6.4: a new leader commits a no-op entry of its term.
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let last = c.nodes[&1].last_index();
    let e = c.nodes[&1].log_entry(last).unwrap();
    assert_eq!(e.kind, EntryKind::Noop);
    assert_eq!(e.term, c.nodes[&1].term());
    assert_eq!(c.nodes[&1].committed(), last);
}

#[test]
fn paper_5_3_replication_respects_entry_and_byte_limits() {
    // §5.3 AppendEntries, batched with explicit limits.
    let mut c = Cluster::with(&[1, 2, 3], |id| {
        let mut x = cfg(id);
        x.entries_per_msg_max = 3;
        x.msg_bytes_max = 200;
        x
    });
    c.elect(1);
    let batch: Vec<Bytes> = (0..20).map(|_| Bytes::from(vec![7u8; 40])).collect();
    c.node(1).propose(&batch).unwrap();
    c.sent.clear();
    c.stabilize();
    let appends: Vec<&Message> = c
        .sent
        .iter()
        .filter(|m| m.kind == MessageKind::Append && !m.entries.is_empty())
        .collect();
    assert!(!appends.is_empty());
    for m in &appends {
        assert!(m.entries.len() <= 3);
        let bytes: u64 = m.entries.iter().map(|e| e.size_bytes()).sum();
        assert!(
            bytes <= 200 || m.entries.len() == 1,
            "{bytes} bytes in one append"
        );
    }
    let l = c.nodes[&1].last_index();
    assert_eq!(c.nodes[&2].committed(), l);
    assert_eq!(c.nodes[&3].last_index(), l);
}

#[test]
fn thesis_10_2_inflight_window_is_bounded() {
    // §10.2 pipelining: at most inflight_msgs_max appends outstanding per follower.
    let mut c = Cluster::with(&[1, 2], |id| {
        let mut x = cfg(id);
        x.entries_per_msg_max = 1;
        x.inflight_msgs_max = 4;
        x
    });
    c.elect(1);
    c.isolated.insert(2); // answers never come back
    let batch: Vec<Bytes> = (0..50).map(|_| Bytes::from_static(b"e")).collect();
    c.node(1).propose(&batch).unwrap();
    c.sent.clear();
    c.stabilize();
    let n = c
        .sent
        .iter()
        .filter(|m| m.kind == MessageKind::Append && m.to == 2)
        .count();
    assert_eq!(n, 4, "window of 4 in-flight appends");
    let (_, _, st) = c.nodes[&1].progress(2).unwrap();
    assert_eq!(st, ProgressState::Replicate);
}

#[test]
fn paper_5_3_fast_backtracking_skips_conflicting_terms() {
    // §5.3 (end): with the conflicting term in the rejection the leader skips a whole term per
    // round trip instead of one entry.
    let conf = ConfState::with_voters(&[1, 2, 3]);
    let log = |term: u64, last: u64| -> RestartState {
        let mut st = RestartState::bootstrap(conf.clone(), Bytes::new());
        st.hard_state.term = term;
        st.entries = (2..=last)
            .map(|i| Entry {
                index: i,
                term,
                kind: EntryKind::Normal,
                data: Bytes::new(),
            })
            .collect();
        st
    };
    let mut c = Cluster::new(&[1, 2, 3]);
    // 1 and 3 hold entries 2..=50 of term 3; 2 holds a stale, longer log of term 2.
    c.nodes.insert(1, RawNode::new(cfg(1), log(3, 50)).unwrap());
    c.nodes.insert(3, RawNode::new(cfg(3), log(3, 50)).unwrap());
    c.nodes
        .insert(2, RawNode::new(cfg(2), log(2, 101)).unwrap());
    c.isolated.insert(2);
    c.node(1).campaign_now();
    c.stabilize();
    assert_eq!(c.nodes[&1].role(), Role::Leader);
    c.isolated.clear();
    c.sent.clear();
    c.tick_all(3);
    let rejects = c
        .sent
        .iter()
        .filter(|m| m.kind == MessageKind::AppendResponse && m.reject && m.from == 2)
        .count();
    assert!(
        (1..=2).contains(&rejects),
        "{rejects} rejections: backtracking should skip the whole term"
    );
    assert_eq!(c.nodes[&2].last_index(), c.nodes[&1].last_index());
    assert_eq!(
        c.nodes[&2].log_term(40),
        Some(3),
        "conflicting suffix replaced"
    );
}

#[test]
fn paper_5_4_2_old_term_entries_not_committed_by_counting() {
    // §5.4.2 (Figure 8): a leader never commits an entry of an earlier term by counting
    // replicas; it commits it only together with an entry of its own term.
    let conf = ConfState::with_voters(&[1, 2, 3]);
    let mut st = RestartState::bootstrap(conf, Bytes::new());
    st.hard_state.term = 2;
    st.entries = vec![Entry {
        index: 2,
        term: 2,
        kind: EntryKind::Normal,
        data: Bytes::from_static(b"old"),
    }];
    let mut cf = cfg(1);
    cf.pre_vote = false;
    let mut n = RawNode::new(cf, st).unwrap();
    n.campaign_now();
    let rd = n.ready();
    n.on_persisted(rd.number).unwrap();
    let t = n.term();
    let mut g = Message::new(MessageKind::VoteResponse, 2, 1, t);
    g.reject = false;
    n.step(g);
    assert_eq!(n.role(), Role::Leader);
    let rd = n.ready();
    n.on_persisted(rd.number).unwrap(); // leader's own log (old entry + no-op) durable
    let mut ack = Message::new(MessageKind::AppendResponse, 2, 1, t);
    ack.index = 2; // follower acknowledges only the old-term entry
    n.step(ack);
    assert_eq!(
        n.committed(),
        1,
        "old-term entry must not be committed by counting"
    );
    let mut ack = Message::new(MessageKind::AppendResponse, 2, 1, t);
    ack.index = 3; // now the no-op of the current term
    n.step(ack);
    assert_eq!(
        n.committed(),
        3,
        "committed together with the current-term entry"
    );
}

// ---------------------------------------------------------------- durability (§3.8, §10.2.1)

#[test]
fn thesis_10_2_1_leader_counts_itself_only_once_durable() {
    // §10.2.1: the leader may send before its own write completes, but counts itself toward
    // the quorum only after.
    let conf = ConfState::with_voters(&[1]);
    let mut n = RawNode::new(cfg(1), RestartState::bootstrap(conf, Bytes::new())).unwrap();
    n.campaign_now();
    let rd = n.ready();
    n.on_persisted(rd.number).unwrap();
    assert_eq!(n.role(), Role::Leader);
    let rd = n.ready(); // holds the no-op
    assert_eq!(n.committed(), 1);
    n.on_persisted(rd.number).unwrap();
    assert_eq!(n.committed(), 2);
    let p = n.propose(&[Bytes::from_static(b"a")]).unwrap();
    let rd = n.ready();
    assert_eq!(rd.entries.len(), 1);
    assert!(
        n.committed() < p.last_index,
        "not durable yet, not committed"
    );
    n.on_persisted(rd.number).unwrap();
    assert_eq!(n.committed(), p.last_index);
    let rd = n.ready();
    assert_eq!(rd.committed_entries.last().unwrap().index, p.last_index);
}

#[test]
fn thesis_3_8_append_ack_waits_for_durability() {
    // §3.8: a follower acknowledges entries only once they are durable.
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.auto_persist = false;
    c.node(1).propose(&[Bytes::from_static(b"x")]).unwrap();
    c.handle_ready(1);
    let m = c.queue.pop_front().unwrap();
    assert_eq!(m.kind, MessageKind::Append);
    let to = m.to;
    c.node(to).step(m);
    let rd = c.node(to).ready();
    assert!(rd
        .messages
        .iter()
        .all(|m| m.kind != MessageKind::AppendResponse));
    assert!(rd
        .persisted_messages
        .iter()
        .any(|m| m.kind == MessageKind::AppendResponse && !m.reject));
}

#[test]
fn candidate_counts_own_vote_only_once_durable() {
    // Paper §5.2 + thesis §3.8: a candidate's vote for itself must be durable before it counts.
    let conf = ConfState::with_voters(&[1]);
    let mut n = RawNode::new(cfg(1), RestartState::bootstrap(conf, Bytes::new())).unwrap();
    n.campaign_now();
    assert_eq!(n.role(), Role::Candidate);
    let rd = n.ready();
    assert_eq!(rd.hard_state.unwrap().vote, 1);
    assert_eq!(n.role(), Role::Candidate);
    n.on_persisted(rd.number).unwrap();
    assert_eq!(n.role(), Role::Leader);
}

// ---------------------------------------------------------------- compaction (§5 / paper §7)

#[test]
fn paper_7_snapshot_sent_in_chunks_to_lagging_follower() {
    // Paper §7: the leader sends its snapshot to a follower that needs discarded entries.
    let mut c = Cluster::with(&[1, 2, 3], |id| {
        let mut x = cfg(id);
        x.msg_bytes_max = 100;
        x.inflight_msgs_max = 2;
        x
    });
    c.elect(1);
    c.isolated.insert(3);
    for i in 0..10 {
        c.propose(1, format!("v{i}").as_bytes());
    }
    let applied = c.nodes[&1].applied();
    let image = Bytes::from(vec![42u8; 1000]);
    c.node(1).compact(applied, image.clone()).unwrap();
    assert_eq!(c.nodes[&1].first_index(), applied + 1);
    c.isolated.clear();
    c.sent.clear();
    let mut got_snapshot = None;
    for _ in 0..40 {
        for n in c.nodes.values_mut() {
            n.tick();
        }
        for _ in 0..200 {
            let ids: Vec<u64> = c.nodes.keys().copied().collect();
            for id in ids {
                if c.nodes[&id].has_ready() {
                    let rd = c.node(id).ready();
                    if id == 3 && rd.snapshot.is_some() {
                        got_snapshot = rd.snapshot.clone();
                    }
                    for m in rd.messages.clone() {
                        c.post(m);
                    }
                    c.finish_ready(id, rd);
                }
            }
            if let Some(m) = c.queue.pop_front() {
                c.node(m.to).step(m);
            }
        }
    }
    let chunks = c
        .sent
        .iter()
        .filter(|m| m.kind == MessageKind::Snapshot && m.to == 3)
        .count();
    assert!(
        chunks >= 10,
        "1000 bytes in 100-byte chunks: {chunks} chunks"
    );
    let s = got_snapshot.expect("follower hands the snapshot to its caller");
    assert_eq!(s.data, image);
    assert_eq!(s.meta.index, applied);
    assert_eq!(c.nodes[&3].last_index(), c.nodes[&1].last_index());
    c.propose(1, b"after");
    assert_eq!(c.nodes[&3].committed(), c.nodes[&1].committed());
}

// ---------------------------------------------------------------- reads (§6.4)

#[test]
fn thesis_6_4_read_index_batches_reads_on_one_round() {
    // §6.4: the leader records its commit index and confirms leadership with one heartbeat
    // round; many reads share it.
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"x");
    for rid in 100..110 {
        c.node(1).read_index(rid).unwrap();
    }
    c.sent.clear();
    let rd = c.node(1).ready();
    let hb = rd
        .messages
        .iter()
        .filter(|m| m.kind == MessageKind::Heartbeat)
        .count();
    assert_eq!(
        hb, 2,
        "one round (one heartbeat per follower) for ten reads"
    );
    assert!(rd.read_states.is_empty(), "not before a quorum answers");
    for m in rd.messages {
        c.post(m);
    }
    c.finish_ready(1, Ready::default_with(rd.number));
    let mut states = Vec::new();
    for _ in 0..100 {
        let ids: Vec<u64> = c.nodes.keys().copied().collect();
        for id in ids {
            if c.nodes[&id].has_ready() {
                let rd = c.node(id).ready();
                states.extend(rd.read_states.clone());
                for m in rd.messages.clone() {
                    c.post(m);
                }
                c.finish_ready(id, rd);
            }
        }
        if let Some(m) = c.queue.pop_front() {
            c.node(m.to).step(m);
        }
    }
    assert_eq!(states.len(), 10);
    let ci = c.nodes[&1].committed();
    assert!(states.iter().all(|s| s.index == ci));
}

trait ReadyExt {
    fn default_with(number: u64) -> Ready;
}
impl ReadyExt for Ready {
    fn default_with(number: u64) -> Ready {
        Ready {
            number,
            ..Default::default()
        }
    }
}

#[test]
fn thesis_6_4_follower_read_goes_through_leader() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"x");
    c.node(2).read_index(7).unwrap();
    let mut states = Vec::new();
    for _ in 0..50 {
        let ids: Vec<u64> = c.nodes.keys().copied().collect();
        for id in ids {
            if c.nodes[&id].has_ready() {
                let rd = c.node(id).ready();
                if id == 2 {
                    states.extend(rd.read_states.clone());
                }
                for m in rd.messages.clone() {
                    c.post(m);
                }
                c.finish_ready(id, rd);
            }
        }
        if let Some(m) = c.queue.pop_front() {
            c.node(m.to).step(m);
        }
    }
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].request_id, 7);
    assert_eq!(states[0].index, c.nodes[&1].committed());
}

#[test]
fn thesis_6_4_1_lease_reads_skip_the_round_when_enabled() {
    // §6.4.1: with lease reads on (off by default), a leader that heard from a quorum less than
    // election_ticks_min - drift ago answers without a new round.
    assert!(
        !Config::new(1).lease_reads,
        "lease reads are off by default"
    );
    let mut c = Cluster::with(&[1, 2, 3], |id| {
        let mut x = cfg(id);
        x.lease_reads = true;
        x
    });
    // With lease reads on, fresh nodes wait an election timeout before voting.
    c.tick_all(40);
    assert_eq!(c.leaders().len(), 1);
    let l = c.leaders()[0];
    c.tick_all(2); // one heartbeat round confirmed
    c.node(l).read_index(1).unwrap();
    let rd = c.node(l).ready();
    assert_eq!(rd.read_states.len(), 1, "served from the lease");
    assert!(rd.messages.iter().all(|m| m.kind != MessageKind::Heartbeat));
}

// ------------------------------------------- reads end exactly once (Ready contract item 6)

fn failure(id: u64, request_id: u64, reason: ReadFailReason) -> (u64, ReadFailure) {
    (id, ReadFailure { request_id, reason })
}

#[test]
fn read_forwarded_to_a_node_that_is_not_leader_fails_as_rejected() {
    // The follower's leader hint is stale: the node it forwards to answers "not leader".
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"x");
    c.node(2).read_index(7).unwrap();
    let rd = c.node(2).ready();
    let forwarded: Vec<Message> = rd.messages;
    c.finish_ready(2, rd_without_messages(rd.number));
    // Before the ReadIndex arrives, node 1 is deposed by CheckQuorum in its own term: it
    // hears from nobody for two election timeouts (only node 1's clock runs; its messages
    // are lost).
    for _ in 0..20 {
        c.node(1).tick();
        let rd = c.node(1).ready();
        c.node(1).on_persisted(rd.number).unwrap();
    }
    assert_eq!(c.nodes[&1].role(), Role::Follower, "CheckQuorum deposed it");
    assert_eq!(c.nodes[&2].leader(), 1, "node 2 still believes in node 1");
    assert_eq!(c.nodes[&1].term(), c.nodes[&2].term());
    for m in forwarded {
        c.node(1).step(m);
    }
    c.stabilize();
    assert_eq!(
        c.read_failures,
        vec![failure(2, 7, ReadFailReason::Rejected)]
    );
    assert!(c.read_states.is_empty());
}

fn rd_without_messages(number: u64) -> Ready {
    Ready {
        number,
        ..Default::default()
    }
}

#[test]
fn read_refused_by_a_full_leader_queue_fails_as_rejected() {
    let mut c = Cluster::with(&[1, 2, 3], |id| {
        let mut x = cfg(id);
        x.read_requests_pending_max = 1;
        x
    });
    c.elect(1);
    c.propose(1, b"x");
    c.node(1).read_index(1).unwrap(); // fills the leader's queue until its round is answered
    c.node(2).read_index(2).unwrap();
    let rd = c.node(2).ready();
    for m in rd.messages {
        c.node(1).step(m); // the forwarded read meets the full queue
    }
    c.stabilize();
    assert_eq!(
        c.read_failures,
        vec![failure(2, 2, ReadFailReason::Rejected)]
    );
    assert_eq!(c.read_states.len(), 1, "the leader's own read is served");
    assert_eq!(c.read_states[0].1.request_id, 1);
}

#[test]
fn forwarded_read_without_an_answer_fails_after_an_election_timeout() {
    // The ReadIndex is lost (a dropped message, a full peer queue): the follower reports it
    // failed after election_ticks_min ticks instead of leaving the caller to its deadline.
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"x");
    c.node(2).read_index(7).unwrap();
    let rd = c.node(2).ready();
    assert!(rd.messages.iter().any(|m| m.kind == MessageKind::ReadIndex));
    c.finish_ready(2, rd); // the ReadIndex is never delivered
    for _ in 0..9 {
        c.tick_all(1);
        assert!(c.read_failures.is_empty(), "not before the timeout");
    }
    c.tick_all(1);
    assert_eq!(
        c.read_failures,
        vec![failure(2, 7, ReadFailReason::NoAnswer)]
    );
    assert_eq!(
        c.nodes[&2].leader(),
        1,
        "the leader itself was fine all along"
    );
    // A late answer is dropped: the read ended once.
    let mut late = Message::new(MessageKind::ReadIndexResponse, 1, 2, c.nodes[&2].term());
    late.context = 7;
    late.index = c.nodes[&1].committed();
    c.node(2).step(late);
    c.stabilize();
    assert!(c.read_states.is_empty(), "late answer ignored");
    assert_eq!(c.read_failures.len(), 1);
}

#[test]
fn duplicated_read_answer_is_reported_once() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"x");
    c.node(2).read_index(7).unwrap();
    c.stabilize();
    assert_eq!(c.read_states.len(), 1);
    let mut dup = Message::new(MessageKind::ReadIndexResponse, 1, 2, c.nodes[&2].term());
    dup.context = 7;
    dup.index = 1;
    c.node(2).step(dup);
    c.stabilize();
    assert_eq!(c.read_states.len(), 1);
    assert!(c.read_failures.is_empty());
}

#[test]
fn reads_pending_at_a_term_change_are_reported_failed() {
    // Thesis §6.4 confirms a read only within one leader's term. When the leader is deposed
    // its own pending read fails, the read a follower forwarded to it is refused (with the
    // new term) and fails there, and a follower's read forwarded to the old leader fails when
    // that follower moves to the new term.
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"x");
    // Leader 1 queues its own read and one forwarded by node 2; node 3 forwards one that is
    // still in flight. No heartbeat round answers them.
    c.node(1).read_index(10).unwrap();
    c.node(2).read_index(20).unwrap();
    let rd2 = c.node(2).ready();
    for m in rd2.messages {
        c.node(1).step(m);
    }
    c.node(3).read_index(30).unwrap();
    let rd3 = c.node(3).ready();
    assert_eq!(rd3.messages.len(), 1);
    let old_term = c.nodes[&1].term();
    // A vote request of a higher term (a transfer, so it passes the lease check) reaches every
    // node first.
    for to in [1, 2, 3] {
        let mut v = Message::new(MessageKind::Vote, 4, to, old_term + 1);
        v.context = raftcore::node::CONTEXT_TRANSFER;
        v.index = 100;
        v.log_term = old_term;
        c.node(to).step(v);
    }
    let rd1 = c.node(1).ready();
    let mut failures = rd1.read_failures.clone();
    assert!(rd1.read_states.is_empty());
    for m in rd1.messages {
        if m.kind == MessageKind::ReadIndexResponse {
            assert!(m.reject);
            assert_eq!(m.term, old_term + 1);
            c.node(m.to).step(m);
        }
    }
    for id in [2, 3] {
        let rd = c.node(id).ready();
        assert!(rd.read_states.is_empty());
        failures.extend(rd.read_failures);
    }
    failures.sort_by_key(|f| f.request_id);
    let abandoned = |request_id| ReadFailure {
        request_id,
        reason: ReadFailReason::Abandoned,
    };
    assert_eq!(failures, vec![abandoned(10), abandoned(20), abandoned(30)]);
}

#[test]
fn leader_that_steps_down_in_its_term_fails_its_reads() {
    // CheckQuorum deposes a leader without a new term: its reads fail then. (The read is
    // asked after 9 ticks of isolation, so it is still unconfirmed but not yet expired when
    // CheckQuorum fires at tick 20.)
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"x");
    c.isolated.insert(1);
    c.tick_all(15);
    assert_eq!(c.nodes[&1].role(), Role::Leader);
    c.node(1).read_index(5).unwrap();
    c.tick_all(5);
    assert_ne!(c.nodes[&1].role(), Role::Leader);
    assert_eq!(
        c.read_failures,
        vec![failure(1, 5, ReadFailReason::Abandoned)]
    );
    assert!(c.read_states.is_empty());
}

#[test]
fn leader_read_unconfirmed_for_an_election_timeout_fails() {
    // A leader cut off from its quorum that does not step down (check_quorum off here) fails
    // its reads after election_ticks_min ticks instead of holding them until it hears of a
    // newer term; a read forwarded to it is refused then.
    let mut c = Cluster::with(&[1, 2, 3], |id| {
        let mut x = cfg(id);
        x.check_quorum = false;
        x
    });
    c.elect(1);
    c.propose(1, b"x");
    c.node(2).read_index(20).unwrap();
    let rd = c.node(2).ready();
    for m in rd.messages {
        c.node(1).step(m); // reaches the leader just before it is cut off
    }
    c.isolated.insert(1);
    c.node(1).read_index(10).unwrap();
    for _ in 0..9 {
        c.node(1).tick();
        c.stabilize();
    }
    assert!(c.read_failures.is_empty(), "not before the timeout");
    c.node(1).tick();
    c.stabilize();
    assert_eq!(c.nodes[&1].role(), Role::Leader, "nothing deposed it");
    assert_eq!(
        c.read_failures,
        vec![failure(1, 10, ReadFailReason::NoAnswer)]
    );
    let refusal = c
        .sent
        .iter()
        .find(|m| m.kind == MessageKind::ReadIndexResponse && m.to == 2)
        .expect("the forwarded read is refused");
    assert!(refusal.reject);
    assert_eq!(refusal.context, 20);
}

#[test]
fn candidate_refuses_a_forwarded_read_at_once() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let t = c.nodes[&2].term();
    c.node(3).campaign_now(); // pre-vote: stays in term t without a leader
    assert_eq!(c.nodes[&3].role(), Role::PreCandidate);
    let mut m = Message::new(MessageKind::ReadIndex, 2, 3, t);
    m.context = 4;
    c.node(3).step(m);
    let rd = c.node(3).ready();
    let r = rd
        .messages
        .iter()
        .find(|m| m.kind == MessageKind::ReadIndexResponse)
        .expect("a refusal");
    assert!(r.reject);
    assert_eq!(r.context, 4);
}

#[test]
fn heartbeat_commit_beyond_the_log_is_bounded_not_fatal() {
    // Input from the network never stops the node: a heartbeat carries no log position, so
    // its commit is bounded by our last index (paper Figure 2, AppendEntries rule 5).
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let (t, last) = (c.nodes[&2].term(), c.nodes[&2].last_index());
    let mut m = Message::new(MessageKind::Heartbeat, 1, 2, t);
    m.commit = last + 10;
    c.node(2).step(m);
    assert_eq!(c.nodes[&2].committed(), last);
    c.nodes[&2].check_invariants().unwrap();
}

// ---------------------------------------------------------------- transfer, membership

#[test]
fn thesis_3_10_leadership_transfer_with_timeout_now() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.propose(1, b"x");
    c.node(1).transfer_leader(3).unwrap();
    assert_eq!(
        c.node(1).propose(&[Bytes::from_static(b"y")]),
        Err(Error::TransferInProgress)
    );
    c.stabilize();
    assert!(c
        .sent
        .iter()
        .any(|m| m.kind == MessageKind::TimeoutNow && m.to == 3));
    assert_eq!(c.leaders(), vec![3]);
}

#[test]
fn learners_receive_the_log_but_do_not_vote() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.add_empty(4);
    c.node(1)
        .propose_conf_change(&ConfChange {
            steps: vec![ConfChangeStep::AddLearner(4)],
        })
        .unwrap();
    c.tick_all(10);
    assert_eq!(c.nodes[&1].conf().learners, vec![4]);
    assert_eq!(c.nodes[&4].last_index(), c.nodes[&1].last_index());
    assert_eq!(c.nodes[&4].conf().learners, vec![4]);
    // A learner never campaigns.
    c.isolated.insert(1);
    c.tick_all(50);
    assert_ne!(c.nodes[&4].role(), Role::Leader);
    assert_ne!(c.nodes[&4].role(), Role::Candidate);
}

#[test]
fn thesis_4_3_joint_consensus_replaces_voters_and_removes_leader() {
    // §4.3: voter changes go through C_old,new (joint majorities), then C_new; the leader may
    // be removed and steps down once C_new is committed (§4.2.2).
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.add_empty(4);
    c.node(1)
        .propose_conf_change(&ConfChange {
            steps: vec![ConfChangeStep::AddVoter(4), ConfChangeStep::Remove(1)],
        })
        .unwrap();
    c.stabilize();
    let joint = c.nodes[&2].conf().clone();
    // Either still joint or already left; the leader auto-leaves.
    c.tick_all(30);
    let conf = c.nodes[&2].conf().clone();
    assert_eq!(conf.voters, vec![2, 3, 4], "joint state was {joint:?}");
    assert!(!conf.is_joint());
    let leaders = c.leaders();
    assert_eq!(leaders.len(), 1);
    assert_ne!(leaders[0], 1, "removed leader stepped down");
    let l = leaders[0];
    let idx = c.propose(l, b"after");
    assert_eq!(c.nodes[&4].committed(), idx);
}

#[test]
fn thesis_4_3_joint_configuration_needs_both_majorities() {
    let conf = ConfState {
        voters: vec![4, 5, 6],
        voters_outgoing: vec![1, 2, 3],
        ..Default::default()
    };
    let mut n = RawNode::new(cfg(1), RestartState::bootstrap(conf, Bytes::new())).unwrap();
    n.campaign_now();
    let rd = n.ready();
    n.on_persisted(rd.number).unwrap();
    let t = n.term();
    for from in [2, 3] {
        let mut r = Message::new(MessageKind::PreVoteResponse, from, 1, t + 1);
        r.reject = false;
        n.step(r);
    }
    // Old majority only: still pre-candidate (not yet a real candidate or leader).
    assert_eq!(n.role(), Role::PreCandidate);
    for from in [4, 5] {
        let r = Message::new(MessageKind::PreVoteResponse, from, 1, t + 1);
        n.step(r);
    }
    assert_eq!(n.role(), Role::Candidate);
}

#[test]
fn conf_change_only_one_pending() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.add_empty(4);
    c.add_empty(5);
    c.auto_persist = false;
    c.node(1)
        .propose_conf_change(&ConfChange {
            steps: vec![ConfChangeStep::AddLearner(4)],
        })
        .unwrap();
    let r = c.node(1).propose_conf_change(&ConfChange {
        steps: vec![ConfChangeStep::AddLearner(5)],
    });
    assert!(matches!(r, Err(Error::ConfChangePending { .. })));
}

// ---------------------------------------------------------------- limits and errors

#[test]
fn uncommitted_bytes_limit_pushes_back_with_typed_error() {
    let mut c = Cluster::with(&[1, 2, 3], |id| {
        let mut x = cfg(id);
        x.uncommitted_bytes_max = 1000;
        x
    });
    c.elect(1);
    c.isolated.insert(2);
    c.isolated.insert(3);
    let big = vec![Bytes::from(vec![0u8; 400])];
    c.node(1).propose(&big).unwrap();
    c.node(1).propose(&big).unwrap();
    let r = c.node(1).propose(&big);
    assert!(
        matches!(r, Err(Error::UncommittedBytesLimit { limit: 1000, .. })),
        "{r:?}"
    );
    c.isolated.clear();
    c.tick_all(5);
    assert_eq!(c.nodes[&1].uncommitted_bytes(), 0);
    c.node(1).propose(&big).unwrap();
}

#[test]
fn proposals_rejected_on_followers() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let r = c.node(2).propose(&[Bytes::from_static(b"x")]);
    assert_eq!(r.err(), Some(Error::NotLeader { leader_hint: 1 }));
}

#[test]
fn malformed_wire_values_are_typed_errors() {
    assert_eq!(
        MessageKind::from_u8(200),
        Err(Error::UnknownMessageKind(200))
    );
    assert_eq!(EntryKind::from_u8(9), Err(Error::UnknownEntryKind(9)));
    assert!(ConfChange::decode(&[1, 2, 0]).is_err());
    assert!(ConfChange::decode(&[]).is_err());
    let cc = ConfChange {
        steps: vec![ConfChangeStep::AddVoter(7), ConfChangeStep::Remove(3)],
    };
    assert_eq!(ConfChange::decode(&cc.encode()).unwrap(), cc);
}

#[test]
fn restart_rebuilds_from_durable_state() {
    let conf = ConfState::with_voters(&[1, 2, 3]);
    let mut st = RestartState::bootstrap(conf, Bytes::new());
    st.hard_state = HardState {
        term: 3,
        vote: 2,
        commit: 5,
    };
    st.entries = (2..=4)
        .map(|i| Entry {
            index: i,
            term: 2,
            kind: EntryKind::Normal,
            data: Bytes::new(),
        })
        .collect();
    // The Ready contract writes the hard state after the entries of the same Ready, so a
    // durable commit index beyond the durable log is a broken disk or caller: a typed error,
    // not a value to clamp (invariant L3).
    assert_eq!(
        RawNode::new(cfg(1), st.clone()).err(),
        Some(Error::InvalidRestartState(
            "commit index beyond the last durable entry"
        ))
    );
    st.hard_state.commit = 4;
    let n = RawNode::new(cfg(1), st.clone()).unwrap();
    assert_eq!(n.term(), 3);
    assert_eq!(n.last_index(), 4);
    assert_eq!(n.committed(), 4);
    st.entries[1].index = 9;
    assert!(matches!(
        RawNode::new(cfg(1), st),
        Err(Error::InvalidRestartState(_))
    ));
}

#[test]
fn malformed_append_from_network_is_dropped() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let last = c.nodes[&2].last_index();
    let t = c.nodes[&2].term();
    let mut m = Message::new(MessageKind::Append, 1, 2, t);
    m.index = last;
    m.log_term = t;
    m.entries = vec![Entry {
        index: last + 5, // gap
        term: t,
        kind: EntryKind::Normal,
        data: Bytes::new(),
    }];
    c.node(2).step(m);
    assert_eq!(c.nodes[&2].last_index(), last);
    c.nodes[&2].check_invariants().unwrap();
}
