//! [`RawNode`]: one replica of one Raft group as a deterministic state machine.
//!
//! References: "Raft paper" = Ongaro & Ousterhout, *In Search of an Understandable Consensus
//! Algorithm* (2014); "thesis" = Ongaro, *Consensus: Bridging Theory and Practice* (2014).

use std::collections::VecDeque;

use bytes::Bytes;

use crate::config::Config;
use crate::error::Error;
use crate::log::RaftLog;
use crate::progress::{committed_index, vote_result, Progress, ProgressState, VoteResult};
use crate::ready::Ready;
use crate::rng::SplitMix64;
use crate::types::{
    ConfChange, ConfChangeStep, ConfState, Entry, EntryKind, HardState, Message, MessageKind,
    ReadFailReason, ReadFailure, ReadState, Role, Snapshot, SnapshotChunk, SnapshotMeta,
};

/// `context` value of a Vote triggered by leadership transfer: voters skip the lease check.
pub const CONTEXT_TRANSFER: u64 = 1;

/// Heartbeats without snapshot-chunk progress before the leader gives up on a snapshot
/// transfer and probes again.
const SNAPSHOT_STALL_HEARTBEATS: u32 = 3;

/// Largest snapshot image a follower will assemble (bytes); larger offers are refused.
pub const SNAPSHOT_BYTES_MAX: u64 = 1 << 32;

/// What a node rebuilds from after a restart: exactly what it had made durable.
#[derive(Clone, Debug, Default)]
pub struct RestartState {
    /// The last durable hard state.
    pub hard_state: HardState,
    /// The last durable snapshot (index 0 and empty conf for a brand-new replica that has not
    /// been given one).
    pub snapshot: Snapshot,
    /// Durable entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

impl RestartState {
    /// The initial state of every founding member of a new group: a snapshot at index 1,
    /// term 1, holding `conf` and the state machine image `data`. Replicas added later start
    /// from `RestartState::default()` and receive a snapshot from the leader.
    pub fn bootstrap(conf: ConfState, data: Bytes) -> Self {
        RestartState {
            hard_state: HardState {
                term: 1,
                vote: 0,
                commit: 1,
            },
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    index: 1,
                    term: 1,
                    conf,
                },
                data,
            },
            entries: Vec::new(),
        }
    }
}

/// A batch accepted by `propose`: entries `first_index..=last_index` of `term`. The batch is
/// committed iff the entry at `last_index` is later applied with this `term`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposed {
    /// The leader's term.
    pub term: u64,
    /// Index of the first entry of the batch.
    pub first_index: u64,
    /// Index of the last entry of the batch.
    pub last_index: u64,
}

#[derive(Debug)]
struct PendingReady {
    number: u64,
    /// Last entry index written by this Ready (clipped if a later truncation cut it).
    last_index: Option<u64>,
    hard_state: Option<HardState>,
    snapshot_index: Option<u64>,
}

#[derive(Debug)]
struct PendingRead {
    from: u64,
    request_id: u64,
    index: u64,
    round: u64,
    /// `ticks` when the read reached this leader; unconfirmed after `election_ticks_min`
    /// more ticks, it fails ([`ReadFailReason::NoAnswer`]).
    asked_tick: u64,
}

/// A read this follower forwarded to its leader and has no answer for yet.
#[derive(Debug)]
struct ForwardedRead {
    request_id: u64,
    /// `ticks` when it was sent; it fails with [`ReadFailReason::NoAnswer`] after
    /// `election_ticks_min` more ticks.
    sent_tick: u64,
}

#[derive(Debug)]
struct Assembly {
    index: u64,
    term: u64,
    conf: ConfState,
    total: u64,
    buf: Vec<u8>,
}

/// One replica of one Raft group. See [`crate::ready`] for the contract with the caller.
#[derive(Debug)]
pub struct RawNode {
    cfg: Config,
    id: u64,
    term: u64,
    vote: u64,
    role: Role,
    leader: u64,
    log: RaftLog,
    conf: ConfState,
    /// Index of the membership change `conf` reflects.
    conf_index: u64,
    /// Membership after each change applied since the snapshot, for `compact`.
    conf_history: Vec<(u64, ConfState)>,
    /// Highest committed index scanned for membership changes.
    conf_scan: u64,
    prs: Vec<Progress>,
    votes: Vec<(u64, bool)>,
    election_elapsed: u32,
    /// Leader: ticks since the last CheckQuorum round.
    quorum_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_ticks: u32,
    ticks: u64,
    rng: SplitMix64,
    msgs: Vec<Message>,
    msgs_after_persist: Vec<Message>,
    pending_readies: VecDeque<PendingReady>,
    ready_seq: u64,
    last_hard_state: HardState,
    snapshot: Snapshot,
    received_snapshot: Option<Snapshot>,
    assembly: Option<Assembly>,
    read_states: Vec<ReadState>,
    read_failures: Vec<ReadFailure>,
    /// Follower: reads forwarded to `leader` in this term, oldest first.
    forwarded_reads: VecDeque<ForwardedRead>,
    reads: VecDeque<PendingRead>,
    /// Reads waiting for this leader's first commit in its term: (from, request id, asked tick).
    reads_waiting_commit: Vec<(u64, u64, u64)>,
    round: u64,
    round_sent_ticks: VecDeque<(u64, u64)>,
    lease_until_tick: u64,
    /// No lease reads before this tick (set when this leader hands leadership away).
    lease_blocked_until_tick: u64,
    /// Term in which this node last sent TimeoutNow: no lease reads for the rest of it.
    timeout_now_term: u64,
    need_read_round: bool,
    need_broadcast: bool,
    transferee: u64,
    pending_conf_index: u64,
    uncommitted_bytes: u64,
    scratch: Vec<u64>,
}

impl RawNode {
    /// Builds a node from durable state (`RestartState::bootstrap` for a new group's founding
    /// members, `RestartState::default()` for a replica to be added later).
    pub fn new(cfg: Config, state: RestartState) -> Result<Self, Error> {
        cfg.validate()?;
        let RestartState {
            hard_state,
            snapshot,
            entries,
        } = state;
        let snap_index = snapshot.meta.index;
        let mut prev_term = snapshot.meta.term;
        for (i, e) in entries.iter().enumerate() {
            if e.index != snap_index + 1 + i as u64 {
                return Err(Error::InvalidRestartState(
                    "entries not contiguous after snapshot",
                ));
            }
            if e.term < prev_term {
                return Err(Error::InvalidRestartState("entry terms decrease"));
            }
            prev_term = e.term;
        }
        let durable_last = snap_index + entries.len() as u64;
        if hard_state.commit > durable_last {
            // The contract writes the hard state after the entries of the same Ready, so a
            // durable commit index never names an entry that is not durable (invariant L3).
            return Err(Error::InvalidRestartState(
                "commit index beyond the last durable entry",
            ));
        }
        // The Ready contract writes entries before the hard state, so a crash may keep entries
        // of a term whose hard state never reached the disk (a follower that first hears of a
        // term through an Append carrying entries of that term). That is a legal durable state,
        // not corruption: adopt the log's term with no vote. No vote in that term can have been
        // sent, because a vote is sent only once the hard state holding it is durable
        // (thesis §3.8); the raised term is persisted with the next Ready.
        let durable_hard_state = hard_state;
        let mut hard_state = hard_state;
        if hard_state.term < prev_term {
            tracing::warn!(
                id = cfg.id,
                hard_state_term = hard_state.term,
                log_term = prev_term,
                "durable log is ahead of the durable term (torn write); adopting the log's term"
            );
            hard_state.term = prev_term;
            hard_state.vote = 0;
        }
        let log = RaftLog::new(snap_index, snapshot.meta.term, entries, hard_state.commit);
        let mut rng = SplitMix64::new(cfg.seed ^ 0x5eed_0000_0000_0000 ^ cfg.id);
        let randomized = cfg.election_ticks_min + rng.below(cfg.election_ticks_min as u64) as u32;
        let mut node = RawNode {
            id: cfg.id,
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: 0,
            conf: snapshot.meta.conf.clone(),
            conf_index: snap_index,
            conf_history: Vec::new(),
            conf_scan: snap_index,
            prs: Vec::new(),
            votes: Vec::new(),
            election_elapsed: 0,
            quorum_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_ticks: randomized,
            ticks: 0,
            rng,
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            pending_readies: VecDeque::new(),
            ready_seq: 0,
            last_hard_state: durable_hard_state,
            snapshot,
            received_snapshot: None,
            assembly: None,
            read_states: Vec::new(),
            read_failures: Vec::new(),
            forwarded_reads: VecDeque::new(),
            reads: VecDeque::new(),
            reads_waiting_commit: Vec::new(),
            round: 0,
            round_sent_ticks: VecDeque::new(),
            lease_until_tick: 0,
            lease_blocked_until_tick: 0,
            timeout_now_term: 0,
            need_read_round: false,
            need_broadcast: false,
            transferee: 0,
            pending_conf_index: 0,
            uncommitted_bytes: 0,
            scratch: Vec::new(),
            log,
            cfg,
        };
        // The commit index is durable only through the hard state, which the Ready contract
        // writes after the entries, so a crash can lose it while keeping the entries. Membership
        // changes take effect when known committed, so a lost commit index would put this node
        // back under an older configuration than one the cluster already left: a removed voter
        // holding C_old,new and C_new in its log could then be elected by a C_old majority while
        // C_new commits on its own (thesis §4.3 needs every decision to be made under the
        // latest configuration). Recover the knowledge instead: a leader proposes a membership
        // change only once every earlier change in its log is applied (one at a time,
        // `propose_conf_change`), so in any log every ConfChange entry that is followed by
        // another ConfChange entry is committed, and so is everything before it.
        let mut conf_entries = (node.log.committed + 1..=node.log.last_index())
            .filter(|&i| {
                node.log
                    .entry(i)
                    .is_some_and(|e| e.kind == EntryKind::ConfChange)
            })
            .rev();
        if let (Some(_), Some(known)) = (conf_entries.next(), conf_entries.next()) {
            node.log.commit_to(known);
        }
        node.last_hard_state.commit = node.log.committed;
        // Membership changes committed before the crash take effect again at once.
        let upto = node.log.committed;
        node.apply_conf_changes_upto(upto);
        node.rebuild_progress();
        Ok(node)
    }

    // ---------------------------------------------------------------- accessors

    /// This replica's id.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Current term.
    pub fn term(&self) -> u64 {
        self.term
    }
    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The leader this node knows of in its term (0 if none).
    pub fn leader(&self) -> u64 {
        self.leader
    }
    /// Current hard state.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }
    /// Current membership (as of the last applied membership change).
    pub fn conf(&self) -> &ConfState {
        &self.conf
    }
    /// Commit index.
    pub fn committed(&self) -> u64 {
        self.log.committed
    }
    /// Applied index as reported by the caller.
    pub fn applied(&self) -> u64 {
        self.log.applied
    }
    /// Highest index durable locally.
    pub fn persisted(&self) -> u64 {
        self.log.persisted
    }
    /// First index still in the log (after the last snapshot).
    pub fn first_index(&self) -> u64 {
        self.log.first_index()
    }
    /// Last index in the log.
    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }
    /// Term of the entry at `index`, if still in the log (or the snapshot's last entry).
    pub fn log_term(&self, index: u64) -> Option<u64> {
        self.log.term(index)
    }
    /// The entry at `index`, if still in the log.
    pub fn log_entry(&self, index: u64) -> Option<&Entry> {
        self.log.entry(index)
    }
    /// The latest local snapshot (what the leader sends to lagging followers).
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
    /// Leadership transfer target, 0 if none.
    pub fn transferee(&self) -> u64 {
        self.transferee
    }
    /// The leader's view of a follower: (matched, next, state). `None` if not leader or unknown.
    pub fn progress(&self, id: u64) -> Option<(u64, u64, ProgressState)> {
        if self.role != Role::Leader {
            return None;
        }
        self.prs
            .iter()
            .find(|p| p.id == id)
            .map(|p| (p.matched, p.next, p.state))
    }
    /// Bytes proposed and not yet committed (leader).
    pub fn uncommitted_bytes(&self) -> u64 {
        self.uncommitted_bytes
    }
    /// Checks internal invariants; `Err` names the first violated one (`"N3: ..."`). The log's
    /// invariants L1-L7 are listed in `log.rs`; the node's are:
    /// - N1. `term >= last log term`: a node never holds an entry from a term it has not seen;
    /// - N2. a leader names itself as leader; a leader or candidate voted for itself in its term
    ///   (paper §5.2: a candidate votes for itself, and a leader was a candidate of its term);
    /// - N3. a leader's own match index equals its `persisted` index: it counts its own log
    ///   toward a commit quorum exactly up to what it made durable (thesis §10.2.1);
    /// - N4. for each replica a leader tracks: `match <= next - 1` and `match <= last_index`
    ///   (a follower cannot have acknowledged an entry the leader never had);
    /// - N5. a leader's in-flight window to each replica holds at most `inflight_msgs_max`;
    /// - N6. only a leader holds reads waiting for confirmation, and only a follower that knows
    ///   a leader other than itself holds forwarded reads; each queue holds at most
    ///   `read_requests_pending_max` (every read that leaves a queue ends as a `ReadState` or a
    ///   `ReadFailure`, see [`crate::ready`]).
    ///
    /// The simulator calls this after every tick (with the full O(n) log walk); the node itself
    /// checks the O(1) form after every input in test and debug builds.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.check_invariants_with(true)
    }

    fn check_invariants_with(&self, full: bool) -> Result<(), String> {
        self.log.check(full)?;
        if self.term < self.log.last_term() {
            return Err(format!(
                "N1: term {} below last log term {}",
                self.term,
                self.log.last_term()
            ));
        }
        if self.role == Role::Leader && self.leader != self.id {
            return Err(format!(
                "N2: leader {} names {} as leader",
                self.id, self.leader
            ));
        }
        if matches!(self.role, Role::Leader | Role::Candidate) && self.vote != self.id {
            return Err(format!(
                "N2: {:?} {} voted for {} in its term {}",
                self.role, self.id, self.vote, self.term
            ));
        }
        if self.role == Role::Leader {
            let last = self.log.last_index();
            for p in &self.prs {
                if p.id == self.id {
                    if p.matched != self.log.persisted {
                        return Err(format!(
                            "N3: leader {} match {} but persisted {}",
                            self.id, p.matched, self.log.persisted
                        ));
                    }
                    continue;
                }
                if p.matched + 1 > p.next || p.matched > last {
                    return Err(format!(
                        "N4: replica {} match {} next {} (leader last index {})",
                        p.id, p.matched, p.next, last
                    ));
                }
                if p.inflights.len() > self.cfg.inflight_msgs_max {
                    return Err(format!(
                        "N5: {} messages in flight to {} (limit {})",
                        p.inflights.len(),
                        p.id,
                        self.cfg.inflight_msgs_max
                    ));
                }
            }
        }
        let limit = self.cfg.read_requests_pending_max;
        let waiting = self.reads.len() + self.reads_waiting_commit.len();
        if (self.role != Role::Leader && waiting > 0) || waiting > limit {
            return Err(format!(
                "N6: {:?} holds {waiting} reads waiting for confirmation (limit {limit})",
                self.role
            ));
        }
        let forwarded = self.forwarded_reads.len();
        if forwarded > 0
            && (self.role != Role::Follower
                || self.leader == 0
                || self.leader == self.id
                || forwarded > limit)
        {
            return Err(format!(
                "N6: {:?} with leader {} holds {forwarded} forwarded reads (limit {limit})",
                self.role, self.leader
            ));
        }
        Ok(())
    }

    /// Stops on a broken invariant in test and debug builds (O(1) checks; see
    /// `check_invariants`). Called at the end of every input.
    #[inline]
    fn assert_invariants(&self) {
        if cfg!(any(test, debug_assertions)) {
            if let Err(e) = self.check_invariants_with(false) {
                panic!(
                    "raftcore invariant violated on node {} in term {}: {e}",
                    self.id, self.term
                );
            }
        }
    }

    // ---------------------------------------------------------------- inputs

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.tick_inner();
        self.assert_invariants();
    }

    fn tick_inner(&mut self) {
        self.ticks += 1;
        self.expire_forwarded_reads();
        let c = self.log.committed;
        self.apply_conf_changes_upto(c);
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.election_elapsed += 1;
            if self.promotable() && self.election_elapsed >= self.randomized_election_ticks {
                self.election_elapsed = 0;
                // Paper §5.2: a follower that hears nothing for an election timeout starts an
                // election; thesis §9.6: first a Pre-Vote round, which does not disturb the
                // cluster if this node could not win.
                self.campaign(self.cfg.pre_vote, false);
            }
        }
    }

    /// A leader's read not confirmed within `election_ticks_min` ticks fails: its heartbeat
    /// rounds reach no quorum (this leader is cut off, possibly deposed without knowing it,
    /// e.g. with `check_quorum` off or a long CheckQuorum period), or it cannot commit in its
    /// term. Later rounds would confirm an earlier read, so a read still waiting after an
    /// election timeout is waiting on the cluster, not on one lost message.
    fn expire_leader_reads(&mut self) {
        let (now, timeout) = (self.ticks, self.cfg.election_ticks_min as u64);
        let mut expired = Vec::new();
        self.reads.retain(|r| {
            let keep = now - r.asked_tick < timeout;
            if !keep {
                expired.push((r.from, r.request_id));
            }
            keep
        });
        self.reads_waiting_commit.retain(|&(from, rid, asked)| {
            let keep = now - asked < timeout;
            if !keep {
                expired.push((from, rid));
            }
            keep
        });
        for (from, rid) in expired {
            self.fail_read(from, rid, ReadFailReason::NoAnswer);
        }
    }

    fn tick_leader(&mut self) {
        self.expire_leader_reads();
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        self.quorum_elapsed += 1;
        if self.cfg.check_quorum && self.quorum_elapsed >= self.cfg.check_quorum_period_ticks() {
            self.quorum_elapsed = 0;
            {
                // Thesis §6.2 / §9.6 CheckQuorum: a leader that has not heard from a quorum in an
                // election timeout steps down, so a partitioned leader stops serving.
                let id = self.id;
                let active = vote_result(&self.conf, |v| {
                    Some(v == id || self.prs.iter().any(|p| p.id == v && p.recent_active))
                });
                for p in self.prs.iter_mut() {
                    p.recent_active = p.id == id;
                }
                if active != VoteResult::Won {
                    tracing::debug!(id, term = self.term, "check quorum failed, stepping down");
                    self.become_follower(self.term, 0);
                    return;
                }
            }
        }
        if self.election_elapsed >= self.cfg.election_ticks_min {
            self.election_elapsed = 0;
            // A transfer that did not finish within an election timeout is abandoned (§3.10).
            self.transferee = 0;
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
            // Snapshot transfers that made no progress go back to probing.
            let mut stalled = Vec::new();
            for p in self.prs.iter_mut() {
                if p.state != ProgressState::Snapshot {
                    continue;
                }
                if p.snap_acked_offset == p.snap_acked_at_last_heartbeat {
                    p.snap_stall_heartbeats += 1;
                    if p.snap_stall_heartbeats >= SNAPSHOT_STALL_HEARTBEATS {
                        stalled.push(p.id);
                    }
                } else {
                    p.snap_acked_at_last_heartbeat = p.snap_acked_offset;
                    p.snap_stall_heartbeats = 0;
                }
            }
            for id in stalled {
                if let Some(p) = self.pr_mut(id) {
                    p.become_probe();
                }
                self.send_append(id);
            }
        }
    }

    /// Steps a message received from a peer. Messages that are stale or malformed are dropped
    /// (with a trace line); they never half-apply. The one message that stops the node is
    /// proof of a second leader in this node's term (paper §5.2, Election Safety): that is a
    /// bug of the cluster, not an input to survive.
    pub fn step(&mut self, m: Message) {
        self.step_inner(m);
        self.assert_invariants();
    }

    fn step_inner(&mut self, m: Message) {
        if m.to != self.id {
            tracing::warn!(
                id = self.id,
                to = m.to,
                "message for another replica dropped"
            );
            return;
        }
        if m.term > self.term {
            if matches!(m.kind, MessageKind::Vote | MessageKind::PreVote) {
                let force = m.context == CONTEXT_TRANSFER;
                // Thesis §4.2.3: a server that heard from a current leader within the minimum
                // election timeout does not grant (pre)votes nor update its term, so a removed
                // or partitioned server cannot depose a healthy leader.
                // With lease reads on, a node that just (re)started may have answered a leader
                // before it crashed: it waits one minimum election timeout before voting, so
                // the leader's lease survives the restart of a follower.
                let in_lease = self.cfg.check_quorum
                    && ((self.leader != 0 && self.election_elapsed < self.cfg.election_ticks_min)
                        || (self.cfg.lease_reads
                            && self.ticks < self.cfg.election_ticks_min as u64));
                if !force && in_lease {
                    return;
                }
            }
            match m.kind {
                MessageKind::PreVote => {}
                MessageKind::PreVoteResponse if !m.reject => {}
                _ => {
                    // Paper §5.1: a higher term always wins; adopt it and become follower.
                    let lead = match m.kind {
                        MessageKind::Append | MessageKind::Heartbeat | MessageKind::Snapshot => {
                            m.from
                        }
                        _ => 0,
                    };
                    self.become_follower(m.term, lead);
                }
            }
        } else if m.term < self.term {
            match m.kind {
                MessageKind::Append | MessageKind::Heartbeat
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    // A stale leader (e.g. after a partition) learns our term and steps down.
                    let r = Message::new(MessageKind::AppendResponse, self.id, m.from, self.term);
                    self.msgs.push(r);
                }
                MessageKind::PreVote => {
                    let mut r =
                        Message::new(MessageKind::PreVoteResponse, self.id, m.from, self.term);
                    r.reject = true;
                    self.msgs.push(r);
                }
                MessageKind::ReadIndex => {
                    // A read forwarded from an older term: refuse it with our term, so the asker
                    // learns the new term (and fails its pending reads) instead of waiting.
                    self.reject_read(m.from, m.context);
                }
                _ => {}
            }
            return;
        }
        match m.kind {
            MessageKind::Vote | MessageKind::PreVote => self.handle_vote_request(m),
            _ => match self.role {
                Role::Leader => self.step_leader(m),
                Role::Candidate | Role::PreCandidate => self.step_candidate(m),
                Role::Follower => self.step_follower(m),
            },
        }
        let c = self.log.committed;
        self.apply_conf_changes_upto(c);
    }

    /// Proposes a batch of commands (leader only). On success the entries are in the log and
    /// will be sent; see [`Proposed`] for how to learn whether they committed.
    pub fn propose(&mut self, commands: &[Bytes]) -> Result<Proposed, Error> {
        let r = self.propose_inner(commands);
        self.assert_invariants();
        r
    }

    fn propose_inner(&mut self, commands: &[Bytes]) -> Result<Proposed, Error> {
        self.check_can_propose()?;
        if commands.len() > self.cfg.proposal_entries_max {
            return Err(Error::ProposalTooLarge {
                count: commands.len(),
                limit: self.cfg.proposal_entries_max,
            });
        }
        let incoming: u64 = commands.iter().map(|c| c.len() as u64 + 24).sum();
        if self.uncommitted_bytes > 0
            && self.uncommitted_bytes + incoming > self.cfg.uncommitted_bytes_max
        {
            return Err(Error::UncommittedBytesLimit {
                pending: self.uncommitted_bytes,
                incoming,
                limit: self.cfg.uncommitted_bytes_max,
            });
        }
        let first = self.log.last_index() + 1;
        let term = self.term;
        self.log
            .append_leader(commands.iter().enumerate().map(|(i, c)| Entry {
                index: first + i as u64,
                term,
                kind: EntryKind::Normal,
                data: c.clone(),
            }));
        self.uncommitted_bytes += incoming;
        self.need_broadcast = true;
        Ok(Proposed {
            term,
            first_index: first,
            last_index: self.log.last_index(),
        })
    }

    fn check_can_propose(&self) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader_hint: self.leader,
            });
        }
        if self.transferee != 0 {
            return Err(Error::TransferInProgress);
        }
        Ok(())
    }

    /// Proposes a membership change (leader only; one at a time). Voter changes go through a
    /// joint configuration (thesis §4.3) which the leader leaves on its own once applied.
    pub fn propose_conf_change(&mut self, cc: &ConfChange) -> Result<Proposed, Error> {
        let r = self.propose_conf_change_inner(cc);
        self.assert_invariants();
        r
    }

    fn propose_conf_change_inner(&mut self, cc: &ConfChange) -> Result<Proposed, Error> {
        self.check_can_propose()?;
        if self.pending_conf_index > self.log.applied {
            return Err(Error::ConfChangePending {
                index: self.pending_conf_index,
            });
        }
        apply_conf_change(&self.conf, cc)?;
        let index = self.log.last_index() + 1;
        let data = cc.encode();
        self.uncommitted_bytes += data.len() as u64 + 24;
        self.log.append_leader(std::iter::once(Entry {
            index,
            term: self.term,
            kind: EntryKind::ConfChange,
            data,
        }));
        self.pending_conf_index = index;
        self.need_broadcast = true;
        Ok(Proposed {
            term: self.term,
            first_index: index,
            last_index: index,
        })
    }

    /// Asks for a linearizable read point (thesis §6.4). On `Ok`, exactly one answer for
    /// `request_id` arrives in a later Ready: a [`ReadState`] (serve the read once applied up to
    /// its index) or a [`ReadFailure`] (the read will not be confirmed; retry it, at the leader
    /// if one is known). See [`crate::ready`] for when reads fail. All reads asked on a leader
    /// before the next Ready share one heartbeat round. `request_id` must not be reused while
    /// a read with that id is pending on this node.
    pub fn read_index(&mut self, request_id: u64) -> Result<(), Error> {
        let r = self.read_index_inner(request_id);
        self.assert_invariants();
        r
    }

    fn read_index_inner(&mut self, request_id: u64) -> Result<(), Error> {
        match self.role {
            Role::Leader => self.leader_read(self.id, request_id, self.ticks),
            Role::Follower if self.leader != 0 => {
                let limit = self.cfg.read_requests_pending_max;
                if self.forwarded_reads.len() >= limit {
                    return Err(Error::ReadQueueFull { limit });
                }
                let mut m = Message::new(MessageKind::ReadIndex, self.id, self.leader, self.term);
                m.context = request_id;
                self.msgs.push(m);
                self.forwarded_reads.push_back(ForwardedRead {
                    request_id,
                    sent_tick: self.ticks,
                });
                Ok(())
            }
            _ => Err(Error::NoLeader),
        }
    }

    /// A forwarded read that got no answer within `election_ticks_min` ticks fails
    /// ([`ReadFailReason::NoAnswer`]) rather than being resent. The request or its answer was
    /// lost (a dropped message, a full peer queue) or the leader cannot confirm its leadership;
    /// a resend to the same leader would wait on the same cause, unbounded, while the caller
    /// holds the client's deadline and knows whether a retry (elsewhere) is still worth it.
    /// One election timeout is also when this follower stops trusting the leader (paper §5.2),
    /// so a retry then goes to whichever leader it knows by then.
    fn expire_forwarded_reads(&mut self) {
        let timeout = self.cfg.election_ticks_min as u64;
        while let Some(r) = self.forwarded_reads.front() {
            if self.ticks - r.sent_tick < timeout {
                break;
            }
            let request_id = r.request_id;
            self.forwarded_reads.pop_front();
            self.read_failures.push(ReadFailure {
                request_id,
                reason: ReadFailReason::NoAnswer,
            });
        }
    }

    /// Answers a ReadIndex this node will not serve: a refusal to a peer, a failure
    /// ([`ReadFailReason::Abandoned`]) for a read of our own.
    fn reject_read(&mut self, from: u64, request_id: u64) {
        self.fail_read(from, request_id, ReadFailReason::Abandoned);
    }

    fn fail_read(&mut self, from: u64, request_id: u64, reason: ReadFailReason) {
        if from == self.id {
            self.read_failures.push(ReadFailure { request_id, reason });
        } else {
            let mut r = Message::new(MessageKind::ReadIndexResponse, self.id, from, self.term);
            r.context = request_id;
            r.reject = true;
            self.msgs.push(r);
        }
    }

    /// Starts a leadership transfer to `to` (thesis §3.10): the leader stops accepting
    /// proposals, brings `to` up to date, then sends it TimeoutNow.
    pub fn transfer_leader(&mut self, to: u64) -> Result<(), Error> {
        let r = self.transfer_leader_inner(to);
        self.assert_invariants();
        r
    }

    fn transfer_leader_inner(&mut self, to: u64) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader_hint: self.leader,
            });
        }
        if to == self.id {
            return Ok(());
        }
        if !self.conf.voters.contains(&to) {
            return Err(Error::InvalidTransferTarget(to));
        }
        self.transferee = to;
        self.election_elapsed = 0;
        let caught_up = self
            .pr(to)
            .is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.send_timeout_now(to);
        } else {
            self.send_append(to);
        }
        Ok(())
    }

    /// Starts an election now, as if the election timeout had elapsed.
    pub fn campaign_now(&mut self) {
        if self.role != Role::Leader && self.promotable() {
            self.campaign(self.cfg.pre_vote, false);
        }
        self.assert_invariants();
    }

    /// The caller applied every committed entry up to `index`.
    pub fn on_applied(&mut self, index: u64) {
        let handed = self.log.apply_next - 1;
        self.log.applied = self.log.applied.max(index.min(handed));
        self.maybe_auto_leave();
        self.assert_invariants();
    }

    /// Every Ready numbered `<= number` is durable.
    pub fn on_persisted(&mut self, number: u64) -> Result<(), Error> {
        let r = self.on_persisted_inner(number);
        self.assert_invariants();
        r
    }

    fn on_persisted_inner(&mut self, number: u64) -> Result<(), Error> {
        if number > self.ready_seq {
            return Err(Error::UnknownReady(number));
        }
        while self
            .pending_readies
            .front()
            .is_some_and(|p| p.number <= number)
        {
            let Some(p) = self.pending_readies.pop_front() else {
                break;
            };
            if let Some(l) = p.last_index {
                self.log.persisted = self.log.persisted.max(l.min(self.log.last_index()));
            }
            if let Some(s) = p.snapshot_index {
                self.log.persisted = self.log.persisted.max(s);
            }
            if let Some(hs) = p.hard_state {
                // The candidate's own vote counts only once it is durable: otherwise a crash
                // could let it vote again in the same term (paper §5.2, one vote per term).
                if self.role == Role::Candidate && hs.term == self.term && hs.vote == self.id {
                    self.record_vote(self.id, true);
                    self.poll();
                }
            }
        }
        if self.role == Role::Leader {
            let persisted = self.log.persisted;
            let id = self.id;
            if let Some(p) = self.pr_mut(id) {
                p.maybe_update(persisted);
            }
            if self.maybe_commit() {
                self.need_broadcast = true;
            }
        }
        let c = self.log.committed;
        self.apply_conf_changes_upto(c);
        Ok(())
    }

    /// Installs a snapshot the caller took of its state machine at `index` (which must be
    /// applied), and drops the log up to `index`. The leader sends this snapshot (in chunks of
    /// `msg_bytes_max`) to followers that need entries before the new first index.
    pub fn compact(&mut self, index: u64, data: Bytes) -> Result<(), Error> {
        let r = self.compact_inner(index, data);
        self.assert_invariants();
        r
    }

    fn compact_inner(&mut self, index: u64, data: Bytes) -> Result<(), Error> {
        if index <= self.log.snap_index {
            return Err(Error::InvalidCompaction {
                index,
                reason: "already compacted",
            });
        }
        if index > self.log.applied {
            return Err(Error::InvalidCompaction {
                index,
                reason: "not applied yet",
            });
        }
        let Some(term) = self.log.term(index) else {
            return Err(Error::InvalidCompaction {
                index,
                reason: "not in the log",
            });
        };
        let conf = self
            .conf_history
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| self.snapshot.meta.conf.clone());
        self.snapshot = Snapshot {
            meta: SnapshotMeta { index, term, conf },
            data,
        };
        self.log.compact(index);
        // Keep the newest change at or below `index` only through the snapshot's conf.
        self.conf_history.retain(|(i, _)| *i > index);
        Ok(())
    }

    // ---------------------------------------------------------------- Ready

    /// True if `ready` would return something to do.
    pub fn has_ready(&self) -> bool {
        !self.msgs.is_empty()
            || !self.msgs_after_persist.is_empty()
            || self.log.has_unstable()
            || self.hard_state() != self.last_hard_state
            || self.received_snapshot.is_some()
            || self.log.has_applicable()
            || !self.read_states.is_empty()
            || !self.read_failures.is_empty()
            || (self.role == Role::Leader && (self.need_broadcast || self.need_read_round))
    }

    /// Collects the work queued since the previous Ready (see [`crate::ready`]).
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            self.flush();
        }
        self.ready_seq += 1;
        let number = self.ready_seq;
        let hs = self.hard_state();
        let hard_state = if hs != self.last_hard_state {
            self.last_hard_state = hs;
            Some(hs)
        } else {
            None
        };
        let entries = self.log.take_unstable();
        let snapshot = self.received_snapshot.take();
        let committed_entries = self
            .log
            .take_applicable(self.cfg.committed_bytes_per_ready_max);
        self.pending_readies.push_back(PendingReady {
            number,
            last_index: entries.last().map(|e| e.index),
            hard_state,
            snapshot_index: snapshot.as_ref().map(|s| s.meta.index),
        });
        let rd = Ready {
            number,
            hard_state,
            entries,
            snapshot,
            messages: std::mem::take(&mut self.msgs),
            persisted_messages: std::mem::take(&mut self.msgs_after_persist),
            committed_entries,
            read_states: std::mem::take(&mut self.read_states),
            read_failures: std::mem::take(&mut self.read_failures),
        };
        self.assert_invariants();
        rd
    }

    // ---------------------------------------------------------------- roles

    fn promotable(&self) -> bool {
        self.conf.is_voter(self.id)
    }

    fn reset(&mut self, term: u64) {
        if term != self.term {
            self.term = term;
            self.vote = 0;
        }
        self.leader = 0;
        self.election_elapsed = 0;
        self.quorum_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_election_ticks =
            self.cfg.election_ticks_min + self.rng.below(self.cfg.election_ticks_min as u64) as u32;
        self.votes.clear();
        self.transferee = 0;
        // Every pending read ends here with an answer (thesis §6.4 confirms a read only within
        // the leader's term): our own reads fail, reads forwarded to us are refused (with the
        // new term, so the asker learns it), and reads we forwarded to the old leader fail.
        // The caller never has to infer lost reads from term or leader changes.
        for r in std::mem::take(&mut self.reads) {
            self.reject_read(r.from, r.request_id);
        }
        for (from, request_id, _) in std::mem::take(&mut self.reads_waiting_commit) {
            self.reject_read(from, request_id);
        }
        for r in std::mem::take(&mut self.forwarded_reads) {
            self.read_failures.push(ReadFailure {
                request_id: r.request_id,
                reason: ReadFailReason::Abandoned,
            });
        }
        self.need_read_round = false;
        self.need_broadcast = false;
        self.lease_until_tick = 0;
        self.round_sent_ticks.clear();
    }

    fn become_follower(&mut self, term: u64, leader: u64) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    fn become_leader(&mut self) {
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = self.id;
        let next = self.log.last_index() + 1;
        for p in self.prs.iter_mut() {
            *p = Progress::new(p.id, next, self.cfg.inflight_msgs_max);
        }
        let (id, persisted) = (self.id, self.log.persisted);
        if let Some(p) = self.pr_mut(id) {
            p.matched = persisted;
            p.become_replicate();
            p.next = next;
            p.recent_active = true;
        }
        // A membership change may still be in the log unapplied: no new one until it is.
        self.pending_conf_index = self.log.last_index();
        self.uncommitted_bytes = 0;
        // Raft paper §8 / thesis §6.4: a no-op entry of the new term, so that earlier entries
        // can be committed (§5.4.2) and reads can be served.
        let index = self.log.last_index() + 1;
        self.log.append_leader(std::iter::once(Entry {
            index,
            term,
            kind: EntryKind::Noop,
            data: Bytes::new(),
        }));
        self.need_broadcast = true;
        tracing::debug!(id = self.id, term, "became leader");
    }

    /// Starts an election (`pre`: a Pre-Vote round first, thesis §9.6).
    fn campaign(&mut self, pre: bool, transfer: bool) {
        let (kind, term) = if pre {
            let t = self.term;
            self.reset(t);
            self.role = Role::PreCandidate;
            // A pre-vote is not a vote: it changes nothing durable, so it counts at once.
            self.record_vote(self.id, true);
            (MessageKind::PreVote, self.term + 1)
        } else {
            let t = self.term + 1;
            self.reset(t);
            self.role = Role::Candidate;
            self.vote = self.id;
            // Our own vote is counted in on_persisted, once the hard state holding it is durable.
            (MessageKind::Vote, self.term)
        };
        if self.poll() {
            return;
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let voters: Vec<u64> = self.voters_all();
        for v in voters {
            if v == self.id {
                continue;
            }
            let mut m = Message::new(kind, self.id, v, term);
            m.index = last_index;
            m.log_term = last_term;
            m.commit = self.log.committed;
            if transfer {
                m.context = CONTEXT_TRANSFER;
            }
            self.msgs.push(m);
        }
    }

    fn voters_all(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .conf
            .voters
            .iter()
            .chain(&self.conf.voters_outgoing)
            .copied()
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn record_vote(&mut self, from: u64, granted: bool) {
        if !self.votes.iter().any(|(id, _)| *id == from) {
            self.votes.push((from, granted));
        }
    }

    /// Counts votes; acts on a decided election. Returns true if the role changed.
    fn poll(&mut self) -> bool {
        let votes = &self.votes;
        let res = vote_result(&self.conf, |v| {
            votes.iter().find(|(id, _)| *id == v).map(|(_, g)| *g)
        });
        match res {
            VoteResult::Won => {
                if self.role == Role::PreCandidate {
                    self.campaign(false, false);
                } else if self.role == Role::Candidate {
                    self.become_leader();
                }
                true
            }
            VoteResult::Lost => {
                let t = self.term;
                self.become_follower(t, 0);
                true
            }
            VoteResult::Pending => false,
        }
    }

    fn handle_vote_request(&mut self, m: Message) {
        let pre = m.kind == MessageKind::PreVote;
        // Paper §5.2: at most one vote per term (a repeat of the same grant is fine).
        let can_vote = self.vote == m.from
            || (self.vote == 0 && self.leader == 0)
            || (pre && m.term > self.term);
        // Paper §5.4.1 election restriction: grant only to a candidate whose log is at least as
        // up to date as ours, so that a leader holds every committed entry.
        let up_to_date = self.log.is_up_to_date(m.index, m.log_term);
        let resp_kind = if pre {
            MessageKind::PreVoteResponse
        } else {
            MessageKind::VoteResponse
        };
        if can_vote && up_to_date {
            let mut r = Message::new(resp_kind, self.id, m.from, m.term);
            if pre {
                self.msgs.push(r);
            } else {
                self.election_elapsed = 0;
                self.vote = m.from;
                r.term = self.term;
                // Thesis §3.8: the vote must be durable before it is sent, or a crash could
                // let this server vote twice in one term.
                self.send_after_persist(r);
            }
        } else {
            let mut r = Message::new(resp_kind, self.id, m.from, self.term);
            r.reject = true;
            self.msgs.push(r);
        }
    }

    fn step_candidate(&mut self, m: Message) {
        match m.kind {
            MessageKind::Append | MessageKind::Heartbeat | MessageKind::Snapshot => {
                // Paper §5.2: a candidate that hears from a leader of its term steps down.
                let t = self.term;
                self.become_follower(t, m.from);
                self.step_follower(m);
            }
            MessageKind::PreVoteResponse if self.role == Role::PreCandidate => {
                self.record_vote(m.from, !m.reject);
                self.poll();
            }
            MessageKind::VoteResponse if self.role == Role::Candidate => {
                self.record_vote(m.from, !m.reject);
                self.poll();
            }
            // No leader here: refuse at once rather than let the asker wait out its timeout.
            MessageKind::ReadIndex => self.reject_read(m.from, m.context),
            _ => {}
        }
    }

    fn step_follower(&mut self, m: Message) {
        if matches!(
            m.kind,
            MessageKind::Append | MessageKind::Heartbeat | MessageKind::Snapshot
        ) && self.leader != 0
            && self.leader != m.from
        {
            // We already follow another leader of this very term: Election Safety (paper
            // §5.2) is broken somewhere in the cluster. Stop, naming both.
            panic!(
                "election safety violated (paper §5.2): nodes {} and {} both lead term {} (seen by node {})",
                self.leader, m.from, self.term, self.id
            );
        }
        match m.kind {
            MessageKind::Append => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_append(m);
            }
            MessageKind::Heartbeat => {
                self.election_elapsed = 0;
                self.leader = m.from;
                // The leader sends min(its commit, our match), which our log is known to hold.
                // A heartbeat carries no log position, so the paper's bound (Figure 2,
                // AppendEntries rule 5: min(leaderCommit, index of last new entry)) becomes our
                // last index; a commit beyond it is a malformed input, not a reason to stop.
                let last = self.log.last_index();
                if m.commit > last {
                    tracing::warn!(
                        id = self.id,
                        from = m.from,
                        commit = m.commit,
                        last,
                        "heartbeat commit beyond our last index"
                    );
                }
                self.log.commit_to(m.commit.min(last));
                let mut r =
                    Message::new(MessageKind::HeartbeatResponse, self.id, m.from, self.term);
                r.context = m.context;
                self.msgs.push(r);
            }
            MessageKind::Snapshot => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_snapshot_chunk(m);
            }
            // Thesis §3.10: the transfer target campaigns at once, skipping Pre-Vote (the old
            // leader asked for it) and the lease check (CONTEXT_TRANSFER).
            MessageKind::TimeoutNow if self.promotable() => self.campaign(false, true),
            MessageKind::ReadIndexResponse => {
                // Only the first answer to a read we still wait for counts: a duplicate or an
                // answer after the read failed is dropped, so each read ends exactly once.
                let Some(at) = self
                    .forwarded_reads
                    .iter()
                    .position(|r| r.request_id == m.context)
                else {
                    return;
                };
                self.forwarded_reads.remove(at);
                if m.reject {
                    self.read_failures.push(ReadFailure {
                        request_id: m.context,
                        reason: ReadFailReason::Rejected,
                    });
                } else {
                    self.read_states.push(ReadState {
                        request_id: m.context,
                        index: m.index,
                    });
                }
            }
            MessageKind::ReadIndex => {
                // We are not the leader: tell the asker to retry elsewhere.
                self.reject_read(m.from, m.context);
            }
            _ => {}
        }
    }

    fn send_after_persist(&mut self, m: Message) {
        // Coalesce acknowledgements to the same leader: the newest one covers the older.
        if m.kind == MessageKind::AppendResponse && !m.reject {
            if let Some(prev) = self.msgs_after_persist.iter_mut().rev().find(|p| {
                p.kind == MessageKind::AppendResponse
                    && !p.reject
                    && p.to == m.to
                    && p.term == m.term
            }) {
                if m.index >= prev.index {
                    prev.index = m.index;
                }
                return;
            }
        }
        self.msgs_after_persist.push(m);
    }

    fn clip_pending(&mut self, index: u64) {
        for p in self.pending_readies.iter_mut() {
            if let Some(l) = p.last_index {
                if l > index {
                    p.last_index = Some(index);
                }
            }
        }
    }

    fn handle_append(&mut self, m: Message) {
        // Input from the network: entries must continue right after (index, log_term), be
        // contiguous, and have non-decreasing terms no newer than the message. Else drop it.
        let mut prev = (m.index, m.log_term);
        for e in &m.entries {
            if e.index != prev.0 + 1 || e.term < prev.1 || e.term > m.term {
                tracing::warn!(id = self.id, from = m.from, "malformed append dropped");
                return;
            }
            prev = (e.index, e.term);
        }
        if m.index < self.log.committed {
            // Everything up to our commit index is committed, hence already matching.
            let mut r = Message::new(MessageKind::AppendResponse, self.id, m.from, self.term);
            r.index = self.log.committed;
            self.send_after_persist(r);
            return;
        }
        if self.log.match_term(m.index, m.log_term) {
            // A conflict at or below the commit index would mean a committed entry differs from
            // the leader's: impossible in a correct cluster (Log Matching + Leader Completeness).
            for e in &m.entries {
                if e.index <= self.log.committed && self.log.term(e.index) != Some(e.term) {
                    tracing::error!(
                        id = self.id,
                        index = e.index,
                        "append conflicts with a committed entry; dropped"
                    );
                    return;
                }
            }
            let last_new = m.index + m.entries.len() as u64;
            if let Some(k) = self.log.append_follower(m.entries) {
                self.clip_pending(k - 1);
            }
            // Paper Figure 2: commitIndex = min(leaderCommit, index of last new entry).
            self.log.commit_to(m.commit.min(last_new));
            let mut r = Message::new(MessageKind::AppendResponse, self.id, m.from, self.term);
            r.index = last_new;
            // §3.8 / §10.2.1: acknowledge only once the entries are durable.
            self.send_after_persist(r);
        } else {
            // Fast backtracking hint: our last entry at or below the probe index whose term is
            // not above the leader's previous term; the leader skips a whole term per round.
            let (hi, ht) = self
                .log
                .find_conflict_by_term(m.index.min(self.log.last_index()), m.log_term);
            let mut r = Message::new(MessageKind::AppendResponse, self.id, m.from, self.term);
            r.index = m.index;
            r.reject = true;
            r.reject_hint_index = hi;
            r.reject_hint_term = ht;
            self.msgs.push(r);
        }
    }

    fn handle_snapshot_chunk(&mut self, m: Message) {
        let Some(c) = m.snapshot else {
            tracing::warn!(id = self.id, "snapshot message without a chunk dropped");
            return;
        };
        let reply = |node: &mut RawNode, next: u64, reject: bool| {
            let mut r = Message::new(MessageKind::SnapshotResponse, node.id, m.from, node.term);
            r.index = c.index;
            r.context = next;
            r.reject = reject;
            node.msgs.push(r);
        };
        if c.index <= self.log.committed {
            // Nothing new for us: acknowledge what we have (committed entries are durable by
            // the time this is sent, as it waits for the next Ready).
            let mut r = Message::new(MessageKind::AppendResponse, self.id, m.from, self.term);
            r.index = self.log.committed;
            self.send_after_persist(r);
            return;
        }
        if c.total_bytes > SNAPSHOT_BYTES_MAX || c.offset + c.data.len() as u64 > c.total_bytes {
            tracing::warn!(
                id = self.id,
                total = c.total_bytes,
                "snapshot chunk out of bounds"
            );
            return;
        }
        if c.offset == 0 {
            self.assembly = Some(Assembly {
                index: c.index,
                term: c.term,
                conf: c.conf.clone(),
                total: c.total_bytes,
                buf: Vec::with_capacity(c.total_bytes.min(64 << 20) as usize),
            });
        }
        let have = match &self.assembly {
            Some(a) if a.index == c.index && a.term == c.term => a.buf.len() as u64,
            _ => {
                reply(self, 0, true);
                return;
            }
        };
        if c.offset != have {
            // Duplicate (offset < have): ack what we have. Gap: ask to resume from `have`.
            reply(self, have, c.offset > have);
            return;
        }
        let Some(a) = self.assembly.as_mut() else {
            return;
        };
        a.buf.extend_from_slice(&c.data);
        let have = a.buf.len() as u64;
        if !c.done {
            reply(self, have, false);
            return;
        }
        let Some(a) = self.assembly.take() else {
            return;
        };
        if have != a.total {
            reply(self, 0, true);
            return;
        }
        let meta = SnapshotMeta {
            index: a.index,
            term: a.term,
            conf: a.conf,
        };
        if self.log.match_term(meta.index, meta.term) {
            // We already hold the snapshot's last entry: keep our log (entries after it may be
            // acknowledged already) and just learn that it is committed.
            self.log.commit_to(meta.index);
        } else {
            // Readies handed out before the install may still become durable; of their
            // entries only the committed prefix is the new log's (see `RaftLog::restore`).
            let committed_before = self.log.committed;
            self.log.restore(meta.index, meta.term);
            self.clip_pending(committed_before);
            self.conf = meta.conf.clone();
            self.conf_index = meta.index;
            self.conf_scan = meta.index;
            self.conf_history.clear();
            self.rebuild_progress();
            let snap = Snapshot {
                meta,
                data: Bytes::from(a.buf),
            };
            self.snapshot = snap.clone();
            self.received_snapshot = Some(snap);
        }
        let mut r = Message::new(MessageKind::AppendResponse, self.id, m.from, self.term);
        r.index = c.index;
        // The snapshot must be durable before we claim to hold it.
        self.send_after_persist(r);
    }

    // ---------------------------------------------------------------- leader

    fn pr(&self, id: u64) -> Option<&Progress> {
        self.prs.iter().find(|p| p.id == id)
    }

    fn pr_mut(&mut self, id: u64) -> Option<&mut Progress> {
        self.prs.iter_mut().find(|p| p.id == id)
    }

    fn step_leader(&mut self, m: Message) {
        match m.kind {
            MessageKind::AppendResponse => self.handle_append_response(m),
            MessageKind::HeartbeatResponse => self.handle_heartbeat_response(m),
            MessageKind::SnapshotResponse => self.handle_snapshot_response(m),
            MessageKind::ReadIndex if self.leader_read(m.from, m.context, self.ticks).is_err() => {
                self.reject_read(m.from, m.context);
            }
            MessageKind::Append | MessageKind::Heartbeat | MessageKind::Snapshot => {
                // Only a leader sends these, and we lead this term: two leaders in one term
                // violate Election Safety (paper §5.2). Every later guarantee rests on it, so
                // stop rather than log and go on.
                panic!(
                    "election safety violated (paper §5.2): nodes {} and {} both lead term {}",
                    self.id, m.from, self.term
                );
            }
            _ => {}
        }
    }

    fn handle_append_response(&mut self, m: Message) {
        let last_index = self.log.last_index();
        let Some(p) = self.pr_mut(m.from) else {
            return;
        };
        p.recent_active = true;
        p.acked_since_heartbeat = true;
        if m.reject {
            // Fast backtracking: resume after the last entry both logs may share.
            let hint = if m.reject_hint_term > 0 {
                self.log
                    .find_conflict_by_term(m.reject_hint_index, m.reject_hint_term)
                    .0
            } else {
                m.reject_hint_index
            };
            let Some(p) = self.pr_mut(m.from) else {
                return;
            };
            if p.maybe_decr_to(m.index, hint) {
                self.send_append(m.from);
            }
            return;
        }
        let updated = p.maybe_update(m.index);
        if p.state == ProgressState::Replicate {
            p.inflights.free_to(m.index);
        }
        if !updated {
            return;
        }
        match p.state {
            ProgressState::Probe => p.become_replicate(),
            ProgressState::Snapshot if p.matched >= p.snap_index => {
                p.become_probe();
                p.become_replicate();
            }
            _ => {}
        }
        let matched = p.matched;
        if self.maybe_commit() {
            self.need_broadcast = true;
        }
        self.need_broadcast = true;
        if m.from == self.transferee && matched == last_index {
            self.send_timeout_now(m.from);
        }
    }

    fn handle_heartbeat_response(&mut self, m: Message) {
        let last = self.log.last_index();
        let Some(p) = self.pr_mut(m.from) else {
            return;
        };
        p.recent_active = true;
        if m.context > p.round_acked {
            p.round_acked = m.context;
        }
        let mut resend = false;
        match p.state {
            ProgressState::Probe => {
                p.probe_sent = false;
                resend = p.matched < last;
            }
            ProgressState::Replicate => {
                if p.inflights.len() > 0 && !p.acked_since_heartbeat {
                    // A whole heartbeat interval without acks while appends are in flight:
                    // assume they were lost and probe again.
                    p.become_probe();
                    resend = true;
                } else {
                    resend = p.matched < last;
                }
            }
            ProgressState::Snapshot => {}
        }
        if resend {
            self.send_append(m.from);
        }
        self.advance_reads();
    }

    fn handle_snapshot_response(&mut self, m: Message) {
        let Some(p) = self.pr_mut(m.from) else {
            return;
        };
        p.recent_active = true;
        if p.state != ProgressState::Snapshot || m.index != p.snap_index {
            return;
        }
        if m.reject {
            p.snap_next_offset = m.context;
            p.inflights.reset();
        } else {
            p.snap_acked_offset = p.snap_acked_offset.max(m.context);
            p.inflights.free_to(m.context);
        }
        p.probe_sent = false;
        self.send_snapshot_chunks(m.from);
    }

    fn send_timeout_now(&mut self, to: u64) {
        // The target will campaign at once, skipping the voters' lease check: our lease is
        // void from now on.
        self.lease_until_tick = 0;
        self.lease_blocked_until_tick = self.ticks + 2 * self.cfg.election_ticks_min as u64;
        // The TimeoutNow may arrive long after the transfer was abandoned (a slow link), and
        // still elect its target past the voters' lease check: no lease for this term again
        // (reads fall back to a confirming heartbeat round, thesis §6.4).
        self.timeout_now_term = self.term;
        let m = Message::new(MessageKind::TimeoutNow, self.id, to, self.term);
        self.msgs.push(m);
    }

    /// Sends as many Appends to `to` as its progress state allows. Returns true if any was sent.
    fn send_append(&mut self, to: u64) -> bool {
        let mut sent = false;
        loop {
            if !self.send_append_once(to) {
                break;
            }
            sent = true;
            if self
                .pr(to)
                .is_none_or(|p| p.state != ProgressState::Replicate)
            {
                break;
            }
        }
        sent
    }

    fn send_append_once(&mut self, to: u64) -> bool {
        if to == self.id {
            return false;
        }
        let (committed, last) = (self.log.committed, self.log.last_index());
        let (entries_max, bytes_max) = (self.cfg.entries_per_msg_max, self.cfg.msg_bytes_max);
        let Some(p) = self.prs.iter().find(|p| p.id == to) else {
            return false;
        };
        if p.is_paused() {
            return false;
        }
        let prev = p.next - 1;
        let Some(prev_term) = self.log.term(prev) else {
            // The follower needs entries we compacted: send the snapshot (paper §7).
            let snap_index = self.snapshot.meta.index;
            if let Some(p) = self.pr_mut(to) {
                p.become_snapshot(snap_index);
            }
            self.send_snapshot_chunks(to);
            return false;
        };
        let has_new = p.next <= last;
        let commit_news = p.commit_sent < committed.min(last);
        let worth_sending = has_new
            || (commit_news && p.state == ProgressState::Replicate)
            || p.state == ProgressState::Probe;
        if !worth_sending {
            return false;
        }
        let entries = if has_new {
            self.log.slice(p.next, entries_max, bytes_max)
        } else {
            Vec::new()
        };
        let mut m = Message::new(MessageKind::Append, self.id, to, self.term);
        m.index = prev;
        m.log_term = prev_term;
        m.commit = committed;
        let n = entries.len() as u64;
        m.entries = entries;
        let Some(p) = self.pr_mut(to) else {
            return false;
        };
        p.commit_sent = committed;
        match p.state {
            ProgressState::Replicate => {
                if n > 0 {
                    p.next = prev + n + 1;
                    p.inflights.add(prev + n);
                }
            }
            _ => p.probe_sent = true,
        }
        self.msgs.push(m);
        n > 0
    }

    fn send_snapshot_chunks(&mut self, to: u64) {
        let chunk = self.cfg.msg_bytes_max.max(1);
        let total = self.snapshot.data.len() as u64;
        loop {
            let Some(p) = self.prs.iter_mut().find(|p| p.id == to) else {
                return;
            };
            if p.state != ProgressState::Snapshot
                || p.inflights.full()
                || p.snap_next_offset == u64::MAX
                || p.snap_index != self.snapshot.meta.index
            {
                return;
            }
            let off = p.snap_next_offset.min(total);
            let end = (off + chunk).min(total);
            let done = end == total;
            p.snap_next_offset = if done { u64::MAX } else { end };
            p.inflights.add(end);
            let s = &self.snapshot;
            let mut m = Message::new(MessageKind::Snapshot, self.id, to, self.term);
            m.snapshot = Some(Box::new(SnapshotChunk {
                index: s.meta.index,
                term: s.meta.term,
                conf: s.meta.conf.clone(),
                offset: off,
                total_bytes: total,
                data: s.data.slice(off as usize..end as usize),
                done,
            }));
            self.msgs.push(m);
        }
    }

    fn broadcast_heartbeat(&mut self) {
        self.round += 1;
        self.round_sent_ticks.push_back((self.round, self.ticks));
        while self.round_sent_ticks.len() > 1024 {
            self.round_sent_ticks.pop_front();
        }
        let committed = self.log.committed;
        for p in self.prs.iter_mut() {
            if p.id == self.id {
                continue;
            }
            p.acked_since_heartbeat = false;
            let mut m = Message::new(MessageKind::Heartbeat, self.id, p.id, self.term);
            m.commit = committed.min(p.matched);
            m.context = self.round;
            self.msgs.push(m);
        }
        // A group of one confirms its rounds alone.
        self.advance_reads();
    }

    /// Leader work deferred to the next Ready so it is batched: one Append per follower for
    /// everything proposed in this loop turn, and one heartbeat round for all new reads.
    fn flush(&mut self) {
        if self.need_broadcast {
            self.need_broadcast = false;
            let ids: Vec<u64> = self.prs.iter().map(|p| p.id).collect();
            for id in ids {
                if id != self.id {
                    self.send_append(id);
                }
            }
        }
        if self.need_read_round {
            self.need_read_round = false;
            self.broadcast_heartbeat();
        }
    }

    fn maybe_commit(&mut self) -> bool {
        let prs = &self.prs;
        let mci = committed_index(
            &self.conf,
            |v| prs.iter().find(|p| p.id == v).map_or(0, |p| p.matched),
            &mut self.scratch,
        );
        // Paper §5.4.2: only entries of the current term are committed by counting replicas;
        // earlier entries are committed indirectly, by the Log Matching Property.
        if mci > self.log.committed && mci != u64::MAX && self.log.term(mci) == Some(self.term) {
            let old = self.log.committed;
            self.log.commit_to(mci);
            let mut freed = 0;
            for i in old + 1..=self.log.committed {
                if let Some(e) = self.log.entry(i) {
                    if e.term == self.term {
                        freed += e.size_bytes();
                    }
                }
            }
            self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(freed);
            if !self.reads_waiting_commit.is_empty() {
                for (from, rid, asked) in std::mem::take(&mut self.reads_waiting_commit) {
                    if self.leader_read(from, rid, asked).is_err() {
                        self.reject_read(from, rid);
                    }
                }
            }
            return true;
        }
        false
    }

    fn committed_in_term(&self) -> bool {
        self.log.term(self.log.committed) == Some(self.term)
    }

    fn leader_read(&mut self, from: u64, request_id: u64, asked_tick: u64) -> Result<(), Error> {
        let limit = self.cfg.read_requests_pending_max;
        if self.reads.len() + self.reads_waiting_commit.len() >= limit {
            return Err(Error::ReadQueueFull { limit });
        }
        // Thesis §6.4 step 1: the leader's commit index is only known to be current once it has
        // committed an entry of its own term (its no-op).
        if !self.committed_in_term() {
            self.reads_waiting_commit
                .push((from, request_id, asked_tick));
            return Ok(());
        }
        let index = self.log.committed;
        let single = self.conf.voters == [self.id] && self.conf.voters_outgoing.is_empty();
        let lease = self.cfg.lease_reads
            && self.transferee == 0
            && self.timeout_now_term != self.term
            && self.ticks >= self.lease_blocked_until_tick
            && self.ticks < self.lease_until_tick;
        if single || lease {
            self.answer_read(from, request_id, index);
            return Ok(());
        }
        // Thesis §6.4 steps 2-3: confirm leadership with a heartbeat round sent after the read
        // arrived; every read that arrives before that round is sent shares it.
        self.reads.push_back(PendingRead {
            from,
            request_id,
            index,
            round: self.round + 1,
            asked_tick,
        });
        self.need_read_round = true;
        Ok(())
    }

    fn answer_read(&mut self, from: u64, request_id: u64, index: u64) {
        if from == self.id {
            self.read_states.push(ReadState { request_id, index });
        } else {
            let mut r = Message::new(MessageKind::ReadIndexResponse, self.id, from, self.term);
            r.index = index;
            r.context = request_id;
            self.msgs.push(r);
        }
    }

    /// Releases reads whose heartbeat round a quorum has answered; renews the lease.
    fn advance_reads(&mut self) {
        let (id, round) = (self.id, self.round);
        let prs = &self.prs;
        let confirmed = committed_index(
            &self.conf,
            |v| {
                if v == id {
                    round
                } else {
                    prs.iter().find(|p| p.id == v).map_or(0, |p| p.round_acked)
                }
            },
            &mut self.scratch,
        );
        if confirmed == u64::MAX || confirmed == 0 {
            return;
        }
        if self.cfg.lease_reads && self.ticks >= self.lease_blocked_until_tick {
            // Lease (thesis §6.4.1): a quorum heard from us at or after the round was sent, and
            // none of them grants a vote within election_ticks_min of that (CheckQuorum lease),
            // minus the allowed clock drift.
            if let Some(&(_, sent)) = self.round_sent_ticks.iter().find(|(r, _)| *r == confirmed) {
                let until =
                    sent + (self.cfg.election_ticks_min - self.cfg.lease_drift_ticks) as u64;
                self.lease_until_tick = self.lease_until_tick.max(until);
            }
        }
        while let Some(r) = self.reads.front() {
            if r.round > confirmed {
                break;
            }
            let Some(r) = self.reads.pop_front() else {
                break;
            };
            self.answer_read(r.from, r.request_id, r.index);
        }
    }

    // ---------------------------------------------------------------- membership

    fn rebuild_progress(&mut self) {
        let members = self.conf.members();
        let next = self.log.last_index() + 1;
        let cap = self.cfg.inflight_msgs_max;
        self.prs.retain(|p| members.contains(&p.id));
        for id in members {
            if !self.prs.iter().any(|p| p.id == id) {
                let mut p = Progress::new(id, next, cap);
                if id == self.id {
                    p.matched = self.log.persisted;
                    p.become_replicate();
                    p.next = next;
                }
                p.recent_active = true;
                self.prs.push(p);
            }
        }
        self.prs.sort_by_key(|p| p.id);
    }

    /// Applies membership changes of every committed entry not scanned yet. A change takes
    /// effect as soon as this node knows it is committed, so no node acts (campaigns, counts
    /// votes) under a configuration older than one it knows committed.
    fn apply_conf_changes_upto(&mut self, upto: u64) {
        let upto = upto.min(self.log.committed);
        if upto <= self.conf_scan {
            return;
        }
        let mut changes = Vec::new();
        for i in self.conf_scan.max(self.log.snap_index) + 1..=upto {
            if let Some(e) = self.log.entry(i) {
                if e.kind == EntryKind::ConfChange {
                    changes.push(e.clone());
                }
            }
        }
        self.conf_scan = upto;
        self.apply_conf_changes_in(&changes);
    }

    /// Membership changes take effect when their entry is committed (as in etcd/raft-rs, which
    /// apply them when applied); safety comes from allowing one pending change at a time and
    /// from joint consensus for voter changes (thesis §4.3).
    fn apply_conf_changes_in(&mut self, entries: &[Entry]) {
        for e in entries {
            if e.kind != EntryKind::ConfChange || e.index <= self.conf_index {
                continue;
            }
            let next =
                ConfChange::decode(&e.data).and_then(|cc| apply_conf_change(&self.conf, &cc));
            match next {
                Ok(c) => {
                    self.conf = c.clone();
                    self.conf_index = e.index;
                    self.conf_history.push((e.index, c));
                    self.rebuild_progress();
                    self.after_conf_change();
                }
                Err(err) => {
                    tracing::error!(id = self.id, index = e.index, %err, "membership change not applied");
                    self.conf_index = e.index;
                }
            }
        }
    }

    fn after_conf_change(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        if !self.conf.is_voter(self.id) {
            // Thesis §4.2.2: a leader removed from the configuration steps down once C_new is
            // committed. Hand leadership to the most up-to-date voter to shorten the gap.
            let last = self.log.last_index();
            if let Some(t) = self
                .conf
                .voters
                .iter()
                .copied()
                .find(|v| self.pr(*v).is_some_and(|p| p.matched == last))
            {
                self.flush();
                self.send_timeout_now(t);
            }
            let t = self.term;
            self.become_follower(t, 0);
            return;
        }
        // Membership changed the quorum: the commit index may move.
        if self.maybe_commit() {
            self.need_broadcast = true;
        }
        self.need_broadcast = true;
    }

    fn maybe_auto_leave(&mut self) {
        if self.role == Role::Leader
            && self.conf.is_joint()
            && self.conf.auto_leave
            && self.pending_conf_index <= self.log.applied
            && self.transferee == 0
        {
            let _ = self.propose_conf_change(&ConfChange::leave_joint());
        }
    }
}

/// The configuration that results from applying `cc` to `conf` (thesis §4.3 joint consensus for
/// voter changes; learner-only changes apply directly).
pub fn apply_conf_change(conf: &ConfState, cc: &ConfChange) -> Result<ConfState, Error> {
    if cc.steps.is_empty() {
        if !conf.is_joint() {
            return Err(Error::InvalidConfChange("not in a joint configuration"));
        }
        let mut learners = conf.learners.clone();
        learners.extend_from_slice(&conf.learners_next);
        learners.sort_unstable();
        learners.dedup();
        return Ok(ConfState {
            voters: conf.voters.clone(),
            learners,
            voters_outgoing: Vec::new(),
            learners_next: Vec::new(),
            auto_leave: false,
        });
    }
    if conf.is_joint() {
        return Err(Error::InvalidConfChange(
            "leave the joint configuration first",
        ));
    }
    let mut voters = conf.voters.clone();
    let mut learners = conf.learners.clone();
    let mut learners_next = Vec::new();
    for s in &cc.steps {
        match *s {
            ConfChangeStep::AddVoter(n) => {
                learners.retain(|&x| x != n);
                learners_next.retain(|&x| x != n);
                if !voters.contains(&n) {
                    voters.push(n);
                }
            }
            ConfChangeStep::AddLearner(n) => {
                voters.retain(|&x| x != n);
                if conf.voters.contains(&n) {
                    if !learners_next.contains(&n) {
                        learners_next.push(n);
                    }
                } else if !learners.contains(&n) {
                    learners.push(n);
                }
            }
            ConfChangeStep::Remove(n) => {
                voters.retain(|&x| x != n);
                learners.retain(|&x| x != n);
                learners_next.retain(|&x| x != n);
            }
        }
    }
    voters.sort_unstable();
    learners.sort_unstable();
    learners_next.sort_unstable();
    if voters.is_empty() {
        return Err(Error::InvalidConfChange("no voters would remain"));
    }
    if voters == conf.voters {
        return Ok(ConfState {
            voters,
            learners,
            voters_outgoing: Vec::new(),
            learners_next: Vec::new(),
            auto_leave: false,
        });
    }
    Ok(ConfState {
        voters,
        learners,
        voters_outgoing: conf.voters.clone(),
        learners_next,
        auto_leave: true,
    })
}

/// Each invariant check fires: a state that breaks it stops the node at its next input
/// (`assert_invariants`, on in test and debug builds).
#[cfg(test)]
mod invariant_tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            data: Bytes::from_static(b"x"),
        }
    }

    /// Node 1 of {1, 2, 3}, leader of term 2 with its no-op durable and two more entries.
    fn leader() -> RawNode {
        let mut c = Config::new(1);
        c.pre_vote = false;
        let st = RestartState::bootstrap(ConfState::with_voters(&[1, 2, 3]), Bytes::new());
        let mut n = RawNode::new(c, st).unwrap();
        n.campaign_now();
        let rd = n.ready();
        n.on_persisted(rd.number).unwrap();
        let mut v = Message::new(MessageKind::VoteResponse, 2, 1, n.term());
        v.reject = false;
        n.step(v);
        assert_eq!(n.role(), Role::Leader);
        n.propose(&[Bytes::from_static(b"a"), Bytes::from_static(b"b")])
            .unwrap();
        let rd = n.ready();
        n.on_persisted(rd.number).unwrap();
        n
    }

    /// Node 2 of {1, 2, 3}, following leader 1 in term 2, holding entries 2..=4.
    fn follower() -> RawNode {
        let st = RestartState::bootstrap(ConfState::with_voters(&[1, 2, 3]), Bytes::new());
        let mut n = RawNode::new(Config::new(2), st).unwrap();
        let mut m = Message::new(MessageKind::Append, 1, 2, 2);
        m.index = 1;
        m.log_term = 1;
        m.commit = 2;
        m.entries = vec![entry(2, 2), entry(3, 2), entry(4, 2)];
        n.step(m);
        let rd = n.ready();
        n.on_persisted(rd.number).unwrap();
        n
    }

    /// Leader 1's whole snapshot (one chunk) at `(index, term)` for node 2, sent in `term`.
    fn whole_snapshot(index: u64, term: u64) -> Message {
        let mut m = Message::new(MessageKind::Snapshot, 1, 2, term);
        m.snapshot = Some(Box::new(SnapshotChunk {
            index,
            term,
            conf: ConfState::with_voters(&[1, 2, 3]),
            offset: 0,
            total_bytes: 1,
            data: Bytes::from_static(b"s"),
            done: true,
        }));
        m
    }

    /// A snapshot whose last entry has another term than the entry we hold there replaces a
    /// log that was durable: until the snapshot itself is, the durable log at that index holds
    /// the old entry, so `persisted` may not claim it (found by the whole-node simulator, seed
    /// 58375 of the 100k soak: a crash between the install and its sync left term 2 at the
    /// index `persisted` named with term 3).
    #[test]
    fn an_installed_snapshot_is_not_persisted_before_its_ready_is() {
        let mut n = follower();
        assert_eq!((n.persisted(), n.log_term(4)), (4, Some(2)));
        let committed_before = n.log.committed;
        n.step(whole_snapshot(4, 3));
        assert_eq!(n.log_term(4), Some(3), "the snapshot was installed");
        assert!(
            n.persisted() <= committed_before,
            "persisted {} names a log whose durable form still ends in term 2 entries \
             (committed before the install: {committed_before})",
            n.persisted()
        );
        let rd = n.ready();
        assert_eq!(rd.snapshot.as_ref().map(|s| s.meta.index), Some(4));
        n.on_persisted(rd.number).unwrap();
        assert_eq!(n.persisted(), 4, "durable once its Ready is");
        n.check_invariants().unwrap();
    }

    /// The same claim reached through a Ready handed out before the install: its entries
    /// (the old, divergent ones) become durable after the install, but the snapshot's Ready
    /// does not yet; `persisted` may rise only to the committed prefix (review of the fix).
    #[test]
    fn a_ready_from_before_an_install_does_not_persist_the_snapshot_index() {
        let st = RestartState::bootstrap(ConfState::with_voters(&[1, 2, 3]), Bytes::new());
        let mut n = RawNode::new(Config::new(2), st).unwrap();
        let mut m = Message::new(MessageKind::Append, 1, 2, 2);
        m.index = 1;
        m.log_term = 1;
        m.commit = 1;
        m.entries = vec![entry(2, 2), entry(3, 2), entry(4, 2)];
        n.step(m);
        let rd1 = n.ready();
        assert_eq!(rd1.entries.len(), 3);
        let committed_before = n.log.committed;
        n.step(whole_snapshot(4, 3));
        let rd2 = n.ready();
        assert!(rd2.snapshot.is_some());
        n.on_persisted(rd1.number).unwrap();
        assert!(
            n.persisted() <= committed_before,
            "persisted {} (term {:?}) while the durable log holds term 2 there",
            n.persisted(),
            n.log_term(n.persisted())
        );
        n.on_persisted(rd2.number).unwrap();
        assert_eq!(n.persisted(), 4);
        n.check_invariants().unwrap();
    }

    #[test]
    fn healthy_nodes_pass() {
        leader().check_invariants().unwrap();
        follower().check_invariants().unwrap();
    }

    #[test]
    #[should_panic(expected = "L1: entries")]
    fn l1_entries_not_contiguous_after_the_snapshot() {
        let mut n = follower();
        n.log.snap_index = 0;
        n.tick();
    }

    #[test]
    #[should_panic(expected = "L2: terms")]
    fn l2_first_term_below_snapshot_term() {
        let mut n = follower();
        n.log.snap_term = 3;
        n.term = 3;
        n.tick();
    }

    #[test]
    #[should_panic(expected = "L3: committed")]
    fn l3_commit_beyond_last_index() {
        let mut n = follower();
        n.log.committed = n.log.last_index() + 1;
        n.tick();
    }

    #[test]
    #[should_panic(expected = "tocommit(5) is out of range [lastIndex(4)]")]
    fn l3_commit_to_beyond_last_index_panics() {
        let mut n = follower();
        n.log.commit_to(5);
    }

    #[test]
    #[should_panic(expected = "L4: apply_next")]
    fn l4_applying_beyond_commit() {
        let mut n = follower();
        n.log.apply_next = n.log.committed + 2;
        n.tick();
    }

    #[test]
    #[should_panic(expected = "L5: unstable_from")]
    fn l5_unstable_beyond_the_log() {
        let mut n = follower();
        n.log.unstable_from = n.log.last_index() + 2;
        n.tick();
    }

    #[test]
    #[should_panic(expected = "L6: applied")]
    fn l6_applied_beyond_what_was_handed_out() {
        let mut n = follower();
        n.log.applied = n.log.apply_next;
        n.tick();
    }

    #[test]
    #[should_panic(expected = "L7: persisted")]
    fn l7_persisted_beyond_the_log() {
        let mut n = follower();
        n.log.persisted = n.log.last_index() + 1;
        n.tick();
    }

    #[test]
    #[should_panic(expected = "N1: term")]
    fn n1_term_below_last_log_term() {
        let mut n = follower();
        n.term = 1;
        n.tick();
    }

    #[test]
    #[should_panic(expected = "N2: leader")]
    fn n2_leader_names_another_leader() {
        let mut n = leader();
        n.leader = 2;
        n.tick();
    }

    #[test]
    #[should_panic(expected = "N2: Leader 1 voted for 3")]
    fn n2_leader_voted_for_another() {
        let mut n = leader();
        n.vote = 3;
        n.tick();
    }

    #[test]
    #[should_panic(expected = "N3: leader 1 match")]
    fn n3_leader_match_is_not_its_persisted_index() {
        let mut n = leader();
        n.log.persisted -= 1;
        n.tick();
    }

    #[test]
    #[should_panic(expected = "N4: replica 2")]
    fn n4_follower_match_not_below_next() {
        let mut n = leader();
        let p = n.pr_mut(2).unwrap();
        p.matched = p.next;
        n.tick();
    }

    #[test]
    #[should_panic(expected = "N4: replica 3")]
    fn n4_follower_match_beyond_leader_log() {
        let mut n = leader();
        let last = n.log.last_index();
        let p = n.pr_mut(3).unwrap();
        p.matched = last + 1;
        p.next = last + 2;
        n.tick();
    }

    #[test]
    #[should_panic(expected = "N5: ")]
    fn n5_inflight_window_overfull() {
        let mut n = leader();
        let cap = n.cfg.inflight_msgs_max;
        let p = n.pr_mut(2).unwrap();
        for i in 0..=cap as u64 {
            p.inflights.add(i);
        }
        n.tick();
    }

    #[test]
    #[should_panic(expected = "N6: Follower holds 1 reads")]
    fn n6_follower_holds_leader_reads() {
        let mut n = follower();
        n.reads_waiting_commit.push((3, 9, 0));
        n.tick();
    }

    #[test]
    #[should_panic(expected = "N6: Leader with leader 1 holds 1 forwarded")]
    fn n6_leader_holds_forwarded_reads() {
        let mut n = leader();
        n.forwarded_reads.push_back(ForwardedRead {
            request_id: 9,
            sent_tick: n.ticks,
        });
        n.tick();
    }

    #[test]
    #[should_panic(expected = "nodes 1 and 3 both lead term 2")]
    fn election_safety_leader_hears_another_leader_of_its_term() {
        // Paper §5.2: at most one leader per term.
        let mut n = leader();
        let mut m = Message::new(MessageKind::Heartbeat, 3, 1, n.term());
        m.context = 1;
        n.step(m);
    }

    #[test]
    #[should_panic(expected = "nodes 1 and 3 both lead term 2 (seen by node 2)")]
    fn election_safety_follower_hears_a_second_leader_of_its_term() {
        let mut n = follower();
        let m = Message::new(MessageKind::Heartbeat, 3, 2, 2);
        n.step(m);
    }
}
