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

// ------------------------------------------------------------------ membership (thesis §4.3)

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use raftcore::{ConfChange, ConfChangeStep, HardState, Role};

/// A small cluster whose Readies are durable as soon as they are handled, with a network that
/// can be split in two sides.
struct Net {
    nodes: BTreeMap<u64, RawNode>,
    queue: VecDeque<Message>,
    side_b: BTreeSet<u64>,
    split: bool,
    /// Every entry each node handed out as committed, by index.
    applied: BTreeMap<u64, BTreeMap<u64, Entry>>,
    /// Hold TimeoutNow messages in `held` instead of delivering them (a slow link).
    hold_timeout_now: bool,
    held: Vec<Message>,
}

impl Net {
    fn new(conf: ConfState) -> Self {
        Self::with(conf, cfg)
    }

    fn with(conf: ConfState, mk: impl Fn(u64) -> Config) -> Self {
        let mut nodes = BTreeMap::new();
        for id in conf.members() {
            let st = RestartState::bootstrap(conf.clone(), Bytes::new());
            nodes.insert(id, RawNode::new(mk(id), st).unwrap());
        }
        Net {
            nodes,
            queue: VecDeque::new(),
            side_b: BTreeSet::new(),
            split: false,
            applied: BTreeMap::new(),
            hold_timeout_now: false,
            held: Vec::new(),
        }
    }

    fn node(&mut self, id: u64) -> &mut RawNode {
        self.nodes.get_mut(&id).unwrap()
    }

    fn post(&mut self, m: Message) {
        if self.split && (self.side_b.contains(&m.from) != self.side_b.contains(&m.to)) {
            return;
        }
        if self.hold_timeout_now && m.kind == MessageKind::TimeoutNow {
            self.held.push(m);
            return;
        }
        self.queue.push_back(m);
    }

    fn stabilize(&mut self) {
        for _ in 0..100_000 {
            let mut any = false;
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                if !self.nodes[&id].has_ready() {
                    continue;
                }
                any = true;
                let rd = self.node(id).ready();
                for m in rd.messages {
                    self.post(m);
                }
                for m in rd.persisted_messages {
                    self.post(m);
                }
                self.node(id).on_persisted(rd.number).unwrap();
                if let Some(last) = rd.committed_entries.last().map(|e| e.index) {
                    let log = self.applied.entry(id).or_default();
                    for e in rd.committed_entries {
                        log.insert(e.index, e);
                    }
                    self.node(id).on_applied(last);
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
        panic!("did not stabilize");
    }

    fn tick(&mut self, ids: &[u64], n: u32) {
        for _ in 0..n {
            for id in ids {
                self.node(*id).tick();
            }
            self.stabilize();
        }
    }

    fn propose(&mut self, id: u64, data: &'static [u8]) -> u64 {
        let p = self.node(id).propose(&[Bytes::from_static(data)]).unwrap();
        self.stabilize();
        p.last_index
    }
}

/// Membership changes take effect when a node knows them committed, and the commit index is
/// durable only through the hard state, which the Ready contract writes after the entries. A
/// removed voter that crashes with a torn write keeps the joint entry J and the leave-joint
/// entry L in its log but loses the commit index that covered J. Before the fix it restarted
/// under C_old and was elected by a C_old majority of removed voters while C_new committed on
/// its own: the two sides applied different entries at one index (thesis §4.3: decisions are
/// made under the latest configuration; §5.4.3 state machine safety). Now a restarting node
/// infers that every ConfChange entry followed by another one is committed (one change at a
/// time), so it restarts under C_old,new and needs a C_new majority too.
///
/// Reachable in the simulator's fault model: the Append that brings L to node 2 also carries
/// later entries and the leader's commit (>= J); the torn write keeps a prefix of entries that
/// ends after L and drops the hard state, so node 2's durable commit is the older one (< J).
#[test]
fn thesis_4_3_removed_voter_with_lost_commit_index_cannot_lead_c_old() {
    let conf = ConfState {
        voters: vec![1, 2, 3],
        learners: vec![4, 5],
        ..Default::default()
    };
    let mut c = Net::new(conf);
    c.node(1).campaign_now();
    c.stabilize();
    assert_eq!(c.nodes[&1].role(), Role::Leader);
    let before_j = c.nodes[&2].committed();
    let j = c
        .node(1)
        .propose_conf_change(&ConfChange {
            steps: vec![
                ConfChangeStep::AddVoter(4),
                ConfChangeStep::AddVoter(5),
                ConfChangeStep::Remove(2),
                ConfChangeStep::Remove(3),
            ],
        })
        .unwrap()
        .last_index;
    c.stabilize();
    c.tick(&[1, 2, 3, 4, 5], 3);
    // The leader left the joint configuration on its own: C_new = {1, 4, 5}.
    assert_eq!(c.nodes[&1].conf().voters, vec![1, 4, 5]);
    assert!(!c.nodes[&1].conf().is_joint());
    let l = (j + 1..=c.nodes[&1].last_index())
        .find(|&i| c.nodes[&1].log_entry(i).unwrap().kind == EntryKind::ConfChange)
        .unwrap();
    assert!(c.nodes[&1].committed() >= l);
    assert!(c.nodes[&2].last_index() >= l, "node 2 holds L");

    // Node 2 crashes; the torn write kept its log up to L (as node 3 holds it) but the hard
    // state that raised its commit index past J is lost.
    let n2 = &c.nodes[&2];
    let mut st = RestartState::bootstrap(
        ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4, 5],
            ..Default::default()
        },
        Bytes::new(),
    );
    let last3 = c.nodes[&3].last_index();
    st.entries = (2..=last3)
        .map(|i| n2.log_entry(i).unwrap().clone())
        .collect();
    st.hard_state = HardState {
        term: n2.term(),
        vote: n2.hard_state().vote,
        commit: before_j,
    };
    c.nodes.insert(2, RawNode::new(cfg(2), st).unwrap());

    // The removed voters 2 and 3 are cut off from C_new; C_new keeps committing.
    c.side_b = [2, 3].into_iter().collect();
    c.split = true;
    let y = c.propose(1, b"y");
    assert!(c.nodes[&1].committed() >= y);
    c.tick(&[2, 3], 40);
    c.tick(&[1, 4, 5], 5);

    // State machine safety (§5.4.3): no two replicas apply different entries at one index.
    let mut at: BTreeMap<u64, (u64, Entry)> = BTreeMap::new();
    for (&id, log) in &c.applied {
        for (&i, e) in log {
            if let Some((other, e0)) = at.get(&i) {
                assert_eq!(
                    (e0.term, &e0.data),
                    (e.term, &e.data),
                    "nodes {other} and {id} applied different entries at index {i}"
                );
            } else {
                at.insert(i, (id, e.clone()));
            }
        }
    }
    assert_ne!(
        c.nodes[&2].role(),
        Role::Leader,
        "a removed voter must not lead under C_old"
    );
}

// ------------------------------------------------------------------ lease reads (thesis §6.4.1)

#[test]
fn thesis_6_4_1_late_timeout_now_cannot_outlive_a_renewed_lease() {
    // A leader that sends TimeoutNow lets the target campaign past the voters' lease check
    // (thesis §3.10 / §6.4.1), so its own lease is void. The transfer may be abandoned (no
    // answer within an election timeout) while the TimeoutNow is still on a slow link; if the
    // leader then renews its lease and the message arrives late, the target is elected and
    // commits writes while the old leader still answers reads from its lease: a stale read.
    // The lease must stay off for the rest of the term once a TimeoutNow was sent.
    let mut c = Net::with(ConfState::with_voters(&[1, 2, 3]), |id| {
        let mut x = cfg(id);
        x.lease_reads = true;
        x
    });
    c.tick(&[1, 2, 3], 40);
    let l = *c
        .nodes
        .iter()
        .find(|(_, n)| n.role() == Role::Leader)
        .unwrap()
        .0;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != l).collect();
    let (a, b) = (others[0], others[1]);
    c.propose(l, b"x");
    c.hold_timeout_now = true;
    c.node(l).transfer_leader(a).unwrap();
    c.stabilize();
    assert_eq!(c.held.len(), 1, "TimeoutNow is on the slow link");
    // The transfer is abandoned; heartbeats keep flowing and renew the lease.
    c.tick(&[1, 2, 3], 35);
    assert_eq!(c.nodes[&l].role(), Role::Leader);
    assert_eq!(c.nodes[&l].transferee(), 0, "transfer abandoned");
    // The old leader is cut off; the late TimeoutNow arrives at the target.
    c.side_b = [l].into_iter().collect();
    c.split = true;
    let t = c.held.pop().unwrap();
    c.node(a).step(t);
    c.stabilize();
    assert_eq!(
        c.nodes[&a].role(),
        Role::Leader,
        "target elected (forced votes)"
    );
    let w = c.propose(a, b"w");
    assert!(c.nodes[&b].committed() >= w || c.nodes[&a].committed() >= w);
    // The old leader, still in its term and within what it believes is its lease, is asked
    // for a read. It must not answer with an index that misses the committed write.
    c.node(l).read_index(99).unwrap();
    let rd = c.node(l).ready();
    for r in &rd.read_states {
        assert!(
            r.index >= w,
            "stale lease read: read index {} misses committed write at {w}",
            r.index
        );
    }
}

// ------------------------------------------------------------------ ReadIndex (thesis §6.4)

#[test]
fn thesis_6_4_read_is_not_confirmed_by_a_round_sent_before_it_arrived() {
    // §6.4 step 3: the leader confirms it is still leader with a heartbeat round sent after the
    // read arrived; answers to an earlier round prove nothing about the read's moment.
    let mut c = Net::new(ConfState::with_voters(&[1, 2, 3]));
    c.node(1).campaign_now();
    c.stabilize();
    assert_eq!(c.nodes[&1].role(), Role::Leader);
    // A heartbeat round goes out (held in our hands).
    let mut round1 = Vec::new();
    while round1.is_empty() {
        c.node(1).tick();
        let rd = c.node(1).ready();
        round1.extend(
            rd.messages
                .into_iter()
                .filter(|m| m.kind == MessageKind::Heartbeat),
        );
        c.node(1).on_persisted(rd.number).unwrap();
    }
    // The read arrives after that round was sent.
    c.node(1).read_index(7).unwrap();
    for hb in round1 {
        let to = hb.to;
        c.node(to).step(hb);
        let rd = c.node(to).ready();
        c.node(to).on_persisted(rd.number).unwrap();
        for m in rd.messages {
            c.node(1).step(m);
        }
    }
    let rd = c.node(1).ready();
    assert!(
        rd.read_states.is_empty(),
        "answers to a round sent before the read must not release it"
    );
    let round2: Vec<Message> = rd
        .messages
        .into_iter()
        .filter(|m| m.kind == MessageKind::Heartbeat)
        .collect();
    assert_eq!(round2.len(), 2, "the read gets its own round");
    c.node(1).on_persisted(rd.number).unwrap();
    for hb in round2 {
        let to = hb.to;
        c.node(to).step(hb);
        let rd = c.node(to).ready();
        for m in rd.messages {
            c.node(1).step(m);
        }
    }
    let rd = c.node(1).ready();
    assert_eq!(rd.read_states.len(), 1);
    assert_eq!(rd.read_states[0].request_id, 7);
}
