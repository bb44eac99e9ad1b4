//! One cluster-wide revision: the design (issue 16), and the revision oracle's core.
//!
//! This module is where the revision scheme is defined. The oracle ([`Oracle`]) is built and
//! tested here; the rest of the design (MVCC, closed revisions, watch, leases) is written down
//! below so that every later increment builds the same thing. Each part names the increment
//! that builds it; "(built)" marks what exists.
//!
//! # Guarantees (what the README will promise once the increments land)
//! - **R1 unique**: every write command (put, delete, transaction that writes) gets one 64-bit
//!   revision no other command in the cluster has. A transaction is one revision, as in etcd.
//! - **R2 real-time order**: if write A was acknowledged before write B was sent, then
//!   rev(A) < rev(B), whatever their partitions.
//! - **R3 log order**: along each partition's committed log, revisions strictly increase.
//! - Revisions are *not dense*: numbers handed out to a batch that never commits, and the
//!   block a meta leader reserved when it lost leadership, are skipped. etcd clients compare
//!   revisions and resume watches at `rev + 1`; neither needs density. `corum ctl` and the
//!   gateway say so where etcd users might count revisions.
//!
//! # Why a timestamp oracle, not hybrid clocks
//! R2 across partitions whose leaders never talk needs either one place that orders
//! allocations (TiKV's placement driver) or clocks with a known error bound and a commit wait
//! of that bound (Spanner; CockroachDB does not promise R2 for unrelated keys). corum runs on
//! machines with no bounded-error clock and keeps lease reads off by default for the same
//! reason, so it takes the oracle: the meta group's leader (partition 0, shard 0 of its node)
//! hands out revisions. The price, stated where users read it:
//! - one extra round per proposal *batch* (not per write): a shard asks for the revisions of
//!   a whole turn's writes, over all its partitions, in one request;
//! - no writes anywhere while the meta group has no leader (a single-group store such as etcd
//!   has the same dependency on its one group).
//!
//! # The oracle (built: [`Oracle`])
//! State, on the meta group's leader only:
//! - the **ceiling**: the highest revision any leader may hand out. It is replicated state:
//!   the meta group's key [`CEILING_KEY`] (u64 little-endian), raised by proposing a put of a
//!   larger value. It never decreases (an applied decrease stops the node: invariant).
//! - `next`: the next revision to hand out, in memory.
//!
//! Rules:
//! 1. A new leader serves nothing until it has applied an entry of its own term (its no-op:
//!    every entry committed by earlier leaders is then applied, so it knows the last committed
//!    ceiling `c`), and then a ceiling raise of its own term: it sets `next = c + 1` and hands
//!    out only numbers `<= ` the raised ceiling. Everything an earlier leader handed out was
//!    `<= c` (rule 3), so R1 holds across leader changes.
//! 2. It raises the ceiling again (one proposal of `ceiling + window`) when fewer than half a
//!    window remain, so serving does not wait for a commit in the steady state.
//! 3. It answers a request only with numbers below a ceiling that is *applied* (committed),
//!    never one merely proposed.
//! 4. **Confirmation**: a request is answered only after a leadership confirmation round
//!    (raftcore's ReadIndex heartbeat round on partition 0, thesis §6.4) that *started after
//!    the request arrived* has been confirmed. Requests arriving in one turn share one round.
//!
//! Why R2 holds: A was allocated by leader O1 of term t1; B's request reached leader O2 of
//! term t2 after A was acknowledged, so after A's allocation. If O2 = O1 (same term), `next`
//! only grows. Otherwise O2's confirmation round (started after B's request arrived, so after
//! O1 confirmed the round covering A) was answered by a majority still in term t2, and O1's
//! round by a majority in term t1 earlier; majorities intersect and terms never go back, so
//! t1 < t2 (t2 < t1 would need a member of O1's majority to go back to t2). The ceiling O1
//! allocated A under was committed (rule 3) before O2 was elected in the later term, so it is
//! in O2's log (Leader Completeness) and `next` of O2 is above it (rule 1): rev(A) < rev(B).
//! Without rule 4 a deposed leader that has not noticed could hand B a number below A's.
//!
//! Lease-based confirmation (skip the round while the leader lease holds) is the same trade as
//! lease reads: an option with a clock-drift allowance, off by default. Not built.
//!
//! # Allocation by shards (increment 3)
//! A shard collects one turn's writes per partition it leads, sends one `RevisionRequest {
//! count }` for all of them (to shard 0 of its node over a channel when the meta leader is
//! local, else over the peer connection to the meta leader's node), and holds the writes until
//! the answer (a range `[first, first + count)`); then each command is proposed with its
//! revision in the entry. Only requests that arrived before the `RevisionRequest` was sent are
//! in it (R2). The shard keeps one request in flight and gathers the next turn's writes
//! meanwhile, as it does for WAL syncs. A leader that answers `NotLeader` or does not answer
//! within an election timeout is asked again at the new leader; revisions received by a shard
//! that lost its partition's leadership are dropped (gaps, never reuse).
//!
//! R3 follows: a partition leader proposes with revisions from a fetch that started after its
//! earlier proposals' fetches were answered, and a new partition leader fetches after its
//! election, after every entry in its log was allocated. The state machine checks R3 on apply
//! (a revision at or below the last applied one stops the node: invariant).
//!
//! # Multi-version state (increment 2)
//! Each partition's state machine keeps, per key, its versions `(revision, create_revision,
//! version, value | tombstone, lease)` newer than the **compaction point**, plus the newest
//! version at or below it. A read at revision `R` returns, per key, the newest version `<= R`
//! that is not a tombstone; `R` below the compaction point is `Compacted { compacted: point }`.
//! `compact R` is a meta-group command every partition learns and applies at its own log
//! position (cluster-wide, as in etcd); automatic compaction by age or by count of revisions is
//! a tuning knob the meta leader acts on. Snapshots carry every kept version and the point.
//!
//! # Closed revisions (increment 4)
//! A partition is **closed at** `C` when its committed log will never hold another entry with a
//! revision `<= C`. After applying an entry of revision `r`, R3 gives `C >= r`. An idle
//! partition would never advance, so its leader, when asked (a reader or watcher waits for
//! `C >= R`) or every `tuning.close_interval_ms` while watchers exist, fetches a revision `T`
//! from the oracle and proposes a `Close(T)` entry: applying it sets `C = T` (R3 holds: later
//! entries are fetched later). Close entries cost one small WAL record per idle partition per
//! interval, only on demand, so thousands of quiet partitions stay quiet.
//!
//! # Reads at a revision, and consistent ranges (increment 4)
//! `get --rev R` and ranges across partitions at `R`: each partition's replica waits (bounded by
//! the request deadline) until it is closed at `>= R`, then reads its versions `<= R`. A range
//! across partitions with no revision is served at `R` = a fresh oracle revision: every write
//! acknowledged before the range was sent is below it (R2), so the range is linearizable and a
//! snapshot of the whole store. A single-partition read keeps the ReadIndex path and reports
//! the partition's newest applied revision in its header.
//!
//! # Watch (increment 5)
//! A watcher names a key, prefix or range, a start revision (or now) and `prev_kv`. The shard it
//! is connected to subscribes to every partition its range covers; each partition's replica
//! streams events from its version history (`>= start`, or `Compacted`), then from applies. The
//! shard merges them and releases events up to `min(closed revision of every covered
//! partition)`, in revision order, each once; a progress notification says "nothing more up to
//! that minimum". Resuming at `last + 1` after a disconnect, leader change or crash replays
//! from the history, so nothing is missed or repeated. A watcher has a byte budget; one that
//! falls behind it is cancelled with a reason (`SlowWatcher`), never buffered without bound.
//! The wire protocol gains server-pushed `WatchEvents` frames with credit-based flow control.
//!
//! # Leases (increment 6)
//! Leases live in the meta group: `grant(ttl)` and `revoke(id)` are meta commands; keep-alives
//! go to the meta leader and are not logged; expiry is decided by the meta leader and proposed
//! as a revoke; a new meta leader extends every live lease by an election timeout (as etcd
//! does). A put with lease `L` on partition `q` is proposed only after `q`'s leader knows `L`
//! is live (its node's lease cache, filled by a linearizable read of the meta group on a miss)
//! and that `q` is registered as holding keys of `L` (one meta command per (lease, partition),
//! on first use). A revoke is proposed in the meta group, then as `RevokeLease(L)` in every
//! registered partition (deleting its keys of `L`, at one revision per partition, and
//! remembering `L` as revoked so a late put with `L` fails `LeaseNotFound`); it is acknowledged
//! when all of them applied, so after the acknowledgement no key of `L` is readable anywhere.
//! (This departs from "expiry decided by partition leaders": a lease spans partitions, and
//! one decider avoids two partitions disagreeing on whether it expired.)
//!
//! # Session consistency (increment 7)
//! The client remembers, per partition, the highest revision it has seen (its writes' and
//! reads' header revisions) and sends it with a `session` read; any replica that has applied
//! that revision of the partition serves it locally (read-your-writes, monotonic reads).

use std::collections::VecDeque;
use std::ops::Range;

/// The meta group's key holding the revision ceiling (u64 little-endian).
pub const CEILING_KEY: &[u8] = b"oracle/ceiling";

/// How far one ceiling raise reaches by default: about a million revisions. A leader change
/// skips at most this many numbers; 2^64 / 2^20 leader changes is never reached.
pub const WINDOW_DEFAULT: u64 = 1 << 20;

/// Most revisions one request may ask for (a shard asks for one turn's writes).
pub const REQUEST_MAX: u64 = 1 << 20;

/// An oracle error: the caller asks again at the current leader, or waits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OracleError {
    /// This node does not lead the meta group (0: leader unknown).
    #[error("not the meta group's leader (leader hint: node {leader})")]
    NotLeader {
        /// The leader this node knows of, or 0.
        leader: u64,
    },
    /// A request for 0 revisions or more than [`REQUEST_MAX`]: bad input from a peer.
    #[error("a request for {count} revisions (1..={REQUEST_MAX} allowed)")]
    BadCount {
        /// The count asked for.
        count: u64,
    },
    /// A ceiling applied below the one already known: the meta group's log went back.
    #[error("revision ceiling went back from {known} to {applied}")]
    CeilingWentBack {
        /// The ceiling known before.
        known: u64,
        /// The smaller one applied.
        applied: u64,
    },
}

/// A request for `count` revisions from `requester` (opaque to the oracle: the driver's
/// handle for the answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant<R> {
    /// Who asked.
    pub requester: R,
    /// The revisions granted, `count` of them.
    pub revisions: Range<u64>,
}

#[derive(Debug)]
struct Waiting<R> {
    requester: R,
    count: u64,
    /// The confirmation round that must be confirmed before this request is answered: the
    /// first round started after it arrived (module docs, rule 4).
    round: u64,
}

/// The meta leader's revision allocator (module docs, "The oracle"). Sans-I/O: the shard
/// core of shard 0 feeds it leadership changes, applied ceilings and confirmed rounds, and
/// carries out what it asks for (a ceiling to propose, a confirmation round to start).
#[derive(Debug)]
pub struct Oracle<R> {
    window: u64,
    /// The highest ceiling applied by this replica's meta state machine.
    ceiling: u64,
    /// The term this node leads in and serves for (0: not serving).
    term: u64,
    /// Set once this leader's own ceiling raise is applied: it may hand out `next..=ceiling`.
    serving: bool,
    next: u64,
    /// A ceiling this leader proposed and has not seen applied.
    raising: Option<u64>,
    /// Rounds: `started` counts rounds started in this term, `confirmed` the highest confirmed.
    started: u64,
    confirmed: u64,
    waiting: VecDeque<Waiting<R>>,
    /// Revisions handed out in this term (for the invariant checks).
    handed_out_max: u64,
}

impl<R> Oracle<R> {
    /// An oracle that raises the ceiling `window` revisions at a time.
    pub fn new(window: u64) -> Oracle<R> {
        assert!(window >= 2, "revision window too small: {window}");
        Oracle {
            window,
            ceiling: 0,
            term: 0,
            serving: false,
            next: 0,
            raising: None,
            started: 0,
            confirmed: 0,
            waiting: VecDeque::new(),
            handed_out_max: 0,
        }
    }

    /// The highest ceiling applied here.
    pub fn ceiling(&self) -> u64 {
        self.ceiling
    }

    /// Whether this oracle hands out revisions now.
    pub fn serving(&self) -> bool {
        self.serving
    }

    /// The meta state machine applied ceiling `c` (a put of [`CEILING_KEY`]), on any replica.
    /// Err: the ceiling went back, a violated invariant (the caller stops the node).
    pub fn ceiling_applied(&mut self, c: u64) -> Result<(), OracleError> {
        if c < self.ceiling {
            return Err(OracleError::CeilingWentBack {
                known: self.ceiling,
                applied: c,
            });
        }
        self.ceiling = c;
        if self.term != 0 && self.raising.is_some_and(|r| r <= c) {
            self.raising = None;
            if !self.serving {
                // Rule 1: the first raise of this term is applied; serve above the ceiling
                // every earlier leader stayed under (set in `became_leader`).
                self.serving = true;
            }
        }
        Ok(())
    }

    /// This node became the meta group's leader in `term` and has applied an entry of that
    /// term (its no-op), so [`Oracle::ceiling`] is the last ceiling any earlier leader
    /// committed. Returns the ceiling to propose (rule 1). Requests waiting from an earlier
    /// term were answered `NotLeader` when it ended.
    pub fn became_leader(&mut self, term: u64) -> u64 {
        assert!(
            term > self.term,
            "leader again in term {term} after {}",
            self.term
        );
        self.term = term;
        self.serving = false;
        self.next = self.ceiling + 1;
        self.handed_out_max = self.ceiling;
        self.started = 0;
        self.confirmed = 0;
        let raise = self.ceiling + self.window;
        self.raising = Some(raise);
        raise
    }

    /// This node no longer leads (or never did): returns every waiting request, to be answered
    /// `NotLeader` with the current leader's id as a hint.
    pub fn stepped_down(&mut self) -> Vec<R> {
        self.term = 0;
        self.serving = false;
        self.raising = None;
        self.waiting.drain(..).map(|w| w.requester).collect()
    }

    /// A request for `count` (>= 1) revisions arrived. Err when this node does not lead.
    pub fn request(&mut self, requester: R, count: u64, leader: u64) -> Result<(), OracleError> {
        if count == 0 || count > REQUEST_MAX {
            return Err(OracleError::BadCount { count });
        }
        if self.term == 0 {
            return Err(OracleError::NotLeader { leader });
        }
        self.waiting.push_back(Waiting {
            requester,
            count,
            round: self.started + 1,
        });
        Ok(())
    }

    /// Whether a confirmation round should start now: a request waits for a round not yet
    /// started. The driver then starts one (a ReadIndex on partition 0) and calls
    /// [`Oracle::round_started`].
    pub fn wants_round(&self) -> bool {
        self.term != 0 && self.waiting.back().is_some_and(|w| w.round > self.started)
    }

    /// A confirmation round started; returns its number (to pass to `round_confirmed`).
    pub fn round_started(&mut self) -> u64 {
        self.started += 1;
        self.started
    }

    /// Round `round` of this term was confirmed (a quorum answered its heartbeat in this
    /// term). Returns the grants that can be made now, in arrival order, and a ceiling to
    /// propose when fewer than half a window remain (rule 2). A request that does not fit
    /// under the applied ceiling waits for the raise (rule 3).
    pub fn round_confirmed(&mut self, round: u64) -> (Vec<Grant<R>>, Option<u64>) {
        if self.term != 0 && round > self.confirmed && round <= self.started {
            self.confirmed = round;
        }
        self.grant()
    }

    /// Makes the grants possible now (also after a ceiling was applied).
    pub fn grant(&mut self) -> (Vec<Grant<R>>, Option<u64>) {
        let mut grants = Vec::new();
        if self.serving {
            while let Some(w) = self.waiting.front() {
                if w.round > self.confirmed || self.next + w.count - 1 > self.ceiling {
                    break;
                }
                let w = self.waiting.pop_front().expect("front");
                let first = self.next;
                self.next += w.count;
                debug_assert!(first > self.handed_out_max || self.handed_out_max == 0);
                self.handed_out_max = self.next - 1;
                grants.push(Grant {
                    requester: w.requester,
                    revisions: first..self.next,
                });
            }
        }
        let mut raise = None;
        if self.serving && self.raising.is_none() {
            let wanted: u64 = self.waiting.iter().map(|w| w.count).sum();
            let left = (self.ceiling + 1).saturating_sub(self.next);
            if left < self.window / 2 || left < wanted {
                let r = self.ceiling + self.window.max(wanted);
                self.raising = Some(r);
                raise = Some(r);
            }
        }
        (grants, raise)
    }

    /// A ceiling proposal of this term failed (the proposal was refused or the entry lost):
    /// returns the ceiling to propose again.
    pub fn raise_lost(&mut self) -> Option<u64> {
        if self.term == 0 {
            return None;
        }
        let r = self.raising?;
        if r <= self.ceiling {
            self.raising = None;
            return None;
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftcore::SplitMix64;

    /// Leader of term 1 serves after its raise; requests wait for a round started after them.
    #[test]
    fn serves_only_after_its_raise_and_a_later_round() {
        let mut o: Oracle<u32> = Oracle::new(100);
        assert_eq!(
            o.request(1, 5, 2),
            Err(OracleError::NotLeader { leader: 2 })
        );
        let raise = o.became_leader(1);
        assert_eq!(raise, 100);
        o.request(1, 5, 1).unwrap();
        assert!(o.wants_round());
        let r = o.round_started();
        // Confirmed, but the raise is not applied: nothing yet (rule 3).
        assert_eq!(o.round_confirmed(r).0, vec![]);
        o.ceiling_applied(100).unwrap();
        let (g, _) = o.grant();
        assert_eq!(
            g,
            vec![Grant {
                requester: 1,
                revisions: 1..6
            }]
        );
        // A request arriving after round 1 started waits for round 2 (rule 4).
        o.request(2, 1, 1).unwrap();
        assert_eq!(o.round_confirmed(r).0, vec![]);
        assert!(o.wants_round());
        let r2 = o.round_started();
        assert_eq!(o.round_confirmed(r2).0[0].revisions, 6..7);
    }

    #[test]
    fn bad_counts_are_refused() {
        let mut o: Oracle<u32> = Oracle::new(10);
        o.became_leader(1);
        assert_eq!(o.request(1, 0, 1), Err(OracleError::BadCount { count: 0 }));
        let huge = REQUEST_MAX + 1;
        assert_eq!(
            o.request(1, huge, 1),
            Err(OracleError::BadCount { count: huge })
        );
        assert!(!o.wants_round());
    }

    #[test]
    fn a_ceiling_that_goes_back_is_an_invariant_violation() {
        let mut o: Oracle<u32> = Oracle::new(10);
        o.ceiling_applied(50).unwrap();
        assert_eq!(
            o.ceiling_applied(49),
            Err(OracleError::CeilingWentBack {
                known: 50,
                applied: 49
            })
        );
    }

    #[test]
    fn raises_before_running_out_and_waits_for_big_requests() {
        let mut o: Oracle<u32> = Oracle::new(10);
        let c = o.became_leader(1);
        o.ceiling_applied(c).unwrap();
        o.request(1, 4, 1).unwrap();
        let r = o.round_started();
        let (g, raise) = o.round_confirmed(r);
        assert_eq!(g[0].revisions, 1..5);
        // 6 left of a window of 10: no raise yet.
        assert_eq!(raise, None);
        o.request(2, 25, 1).unwrap();
        let r = o.round_started();
        let (g, raise) = o.round_confirmed(r);
        assert!(g.is_empty(), "25 do not fit under ceiling 10");
        assert_eq!(raise, Some(10 + 25));
        o.ceiling_applied(35).unwrap();
        let (g, _) = o.grant();
        assert_eq!(g[0].revisions, 5..30);
    }

    #[test]
    fn stepping_down_returns_every_waiting_request() {
        let mut o: Oracle<u32> = Oracle::new(10);
        o.became_leader(3);
        o.request(7, 1, 1).unwrap();
        o.request(8, 2, 1).unwrap();
        assert_eq!(o.stepped_down(), vec![7, 8]);
        assert!(!o.wants_round());
        assert_eq!(
            o.request(9, 1, 2),
            Err(OracleError::NotLeader { leader: 2 })
        );
    }

    /// A model of the meta group: leaders come and go, each with its own oracle on one of three
    /// replicas; raises commit (and are applied on every replica) or are lost. A leader is
    /// elected only with every committed ceiling applied (rule 1's precondition), and a deposed
    /// leader keeps its state but is never confirmed again (rule 4). Checks: every revision
    /// handed out is unique, and each is above every revision handed out in an earlier term
    /// (R2's core: the oracle of a later term never goes below an earlier term's grants).
    #[test]
    fn random_leader_changes_never_reuse_or_reorder_revisions() {
        let mut grants_total = 0u64;
        for seed in 0..300u64 {
            let mut rng = SplitMix64::new(seed);
            let mut nodes: Vec<Oracle<u64>> = (0..3).map(|_| Oracle::new(8)).collect();
            let mut committed = 0u64;
            let mut term = 0u64;
            let mut leader = usize::MAX;
            let mut granted_max_before_term = 0u64;
            let mut granted_max = 0u64;
            let mut next_req = 0u64;
            for _ in 0..400 {
                match rng.below(10) {
                    0 => {
                        // Election: the new leader has applied every committed ceiling.
                        if leader != usize::MAX {
                            nodes[leader].stepped_down();
                        }
                        term += 1;
                        leader = rng.below(3) as usize;
                        granted_max_before_term = granted_max;
                        let n = &mut nodes[leader];
                        n.ceiling_applied(committed.max(n.ceiling())).unwrap();
                        let raise = n.became_leader(term);
                        if rng.chance(800_000) {
                            committed = committed.max(raise);
                            for n in nodes.iter_mut() {
                                n.ceiling_applied(committed).unwrap();
                            }
                        } else if let Some(again) = nodes[leader].raise_lost() {
                            // Proposed again later (below, on a grant).
                            assert_eq!(again, raise);
                        }
                    }
                    1..=5 if leader != usize::MAX => {
                        next_req += 1;
                        let n = &mut nodes[leader];
                        n.request(next_req, 1 + rng.below(5), 0).unwrap();
                    }
                    _ if leader != usize::MAX => {
                        let n = &mut nodes[leader];
                        if n.wants_round() {
                            let r = n.round_started();
                            let (grants, raise) = n.round_confirmed(r);
                            for g in grants {
                                assert!(
                                    g.revisions.start > granted_max,
                                    "seed {seed}: {:?} not above {granted_max}",
                                    g.revisions
                                );
                                assert!(g.revisions.start > granted_max_before_term);
                                assert!(g.revisions.end - 1 <= committed, "above the ceiling");
                                granted_max = g.revisions.end - 1;
                                grants_total += 1;
                            }
                            let raise = raise.or_else(|| n.raise_lost());
                            if let Some(c) = raise {
                                if rng.chance(700_000) {
                                    committed = committed.max(c);
                                    for n in nodes.iter_mut() {
                                        n.ceiling_applied(committed).unwrap();
                                    }
                                    let (grants, _) = nodes[leader].grant();
                                    for g in grants {
                                        assert!(g.revisions.start > granted_max);
                                        assert!(g.revisions.end - 1 <= committed);
                                        granted_max = g.revisions.end - 1;
                                    }
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        assert!(
            grants_total > 10_000,
            "the model granted only {grants_total} times"
        );
    }
}
