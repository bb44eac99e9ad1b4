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
//! - per proposal *batch* (not per write), a round trip to the meta leader plus its
//!   confirmation round (one heartbeat to a quorum of the meta group, which has a voter on
//!   every node of the initial cluster): a shard asks for the revisions of a whole turn's
//!   writes, over all its partitions, in one request. With one request in flight per shard,
//!   that round trip bounds a shard's batch rate (batches grow to absorb the load, as with
//!   WAL syncs);
//! - no writes anywhere while the meta group has no leader (a single-group store such as etcd
//!   has the same dependency on its one group).
//!
//! # The oracle (built: [`Oracle`])
//! State, on the meta group's leader only:
//! - the **ceiling**: the highest revision any leader may hand out. It is replicated state:
//!   the meta group's key [`CEILING_KEY`] (u64 little-endian), changed only by a **raise**: a
//!   compare-and-set transaction "if the ceiling is `c`, put `c + window`" ([`Raise`]). So
//!   the replicated value only grows, and a raise that applies proves which value it
//!   replaced. The oracle keeps no copy of it between terms (a copy can be stale: a replica
//!   restored from a snapshot never saw the puts behind it).
//! - `next`: the next revision to hand out, in memory.
//!
//! Rules:
//! 1. A new leader reads the ceiling `c` from its meta state machine (best after its term's
//!    no-op is applied, when no raise of an earlier leader is still to apply), sets
//!    `next = c + 1` and proposes the raise `c -> c + window`. It serves nothing until *its
//!    own* raise applies (identified by its own proposal's answer, not by the value). A raise
//!    whose compare fails (another leader raised since) is redone from the value found, with
//!    `next` moved above it. When its raise applies, the ceiling was exactly `c` at that log
//!    position, so every number any leader handed out was `<= c < next` (rule 3): R1 holds
//!    across leader changes, whatever the leader read and when.
//! 2. It raises again from its own ceiling when fewer than half a window (or fewer than the
//!    waiting requests need) remain, so serving does not wait for a commit in the steady state.
//! 3. It hands out only numbers `<=` a ceiling its own applied raise set, never one merely
//!    proposed.
//! 4. **Confirmation**: a request is answered only after a leadership confirmation round
//!    (raftcore's ReadIndex heartbeat round on partition 0, thesis §6.4) that *started after
//!    the request arrived* has been confirmed, in the term the oracle serves (rounds are
//!    tagged with their term). Requests arriving in one turn share one round; a round raftcore
//!    gives up on without a step-down is started again. The meta group never answers it from
//!    a leader lease: partition 0 runs with `lease_reads` off whatever the tuning says (an
//!    increment that wires the oracle must enforce this; today `raft_config` applies the
//!    tuning to every partition).
//!
//! Why R2 holds: A was allocated by leader O1 of term t1; B's request reached leader O2 of
//! term t2 after A was acknowledged, so after A's allocation. If O2 = O1 (same term), `next`
//! only grows. Otherwise O2's confirmation round (started after B's request arrived, so after
//! O1 confirmed the round covering A) was answered by a majority still in term t2, and O1's
//! round by a majority in term t1 earlier; majorities intersect and terms never go back, so
//! t1 < t2 (t2 < t1 would need a member of O1's majority to go back to t2). The raise O1
//! allocated A under is committed in term t1 (rule 3), so by Leader Completeness it is in
//! O2's log, before every entry of term t2 (terms grow along a log), in particular before
//! O2's own raise; that raise applied (rule 1) with the ceiling then `>=` O1's (the value only
//! grows), and O2's `next` is above it: rev(A) < rev(B). (Leader Completeness, not real
//! time: on five nodes O1's raise can reach its third replica after O2's election.)
//! Without rule 4 a deposed leader that has not noticed could hand B a number below A's.
//! The proof needs a quorum round; with a single-voter meta group the round is trivially
//! confirmed, which is still correct (no other leader can exist), and a lease would replace
//! it only under a clock-drift bound.
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
//! within an election timeout is asked again at the new leader.
//!
//! Each fetch is tagged with, per partition it covers, the partition's term when it was sent.
//! An answer is used only for partitions whose term is unchanged and only if it answers the
//! newest fetch sent (a retried fetch supersedes the first: a late answer to the first is
//! dropped). The revisions are used at once: proposed in the same turn, or, if the proposal
//! is refused (`Busy`, a transfer in progress), dropped and fetched again. Dropped revisions
//! are gaps, never reused. `Close` entries (below) are fetched through the same pipeline.
//!
//! R3 follows: a partition leader proposes, in its term, with revisions from a fetch sent in
//! that term after its earlier fetches were answered, and a new partition leader fetches
//! after its election, after every entry in its log was allocated (a fetch sent in an earlier
//! term of the same node is never used: the review's schedule where a node leads, loses,
//! wins again and then receives a stale answer). The state machine checks R3 on apply, and a
//! command whose revision is not above the last applied one is *refused deterministically*
//! (every replica refuses it the same way; its waiter gets a retryable error, the entry
//! changes nothing), never a stop: a stop would repeat on every replica replaying the log.
//!
//! A retried session write (thesis §6.3) that finds its result cached answers with the
//! revision of the original apply (its key's `mod_revision`), not the retry's; the retry's
//! entry still counts for the R3 check and for the closed revision.
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
//! interval, only on demand, and their revisions come in the shard's per-turn fetch with its
//! writes. Quiet partitions stay quiet only while nobody watches them: one prefix watcher
//! covers every partition (keys are hashed), so it makes each idle partition write a Close
//! per interval (the review's L3; a side channel for closed revisions, as CockroachDB has,
//! would avoid the log writes and is left for later).
//!
//! # Reads at a revision, and consistent ranges (increment 4)
//! `get --rev R` and ranges across partitions at `R`: each partition's replica waits (bounded by
//! the request deadline) until it is closed at `>= R`, then reads its versions `<= R`. A
//! revision above any handed out (the oracle's next, asked once) is refused at once with
//! `FutureRevision`, as etcd does; so is `compact R` for such an `R`. A range
//! across partitions with no revision is served at `R` = a fresh oracle revision: every write
//! acknowledged before the range was sent is below it (R2), so the range is linearizable and a
//! snapshot of the whole store. A single-partition read keeps the ReadIndex path and reports
//! the partition's closed revision in its header. Open: that header can be below a revision
//! the same client saw from another partition (etcd clients assume the store's revision never
//! goes back); the gateway may have to report a fresh oracle revision instead.
//! Keys are spread over partitions by hash, so a prefix range or watch covers every
//! partition: its latency is the oracle round plus the slowest partition's close.
//!
//! # Watch (increment 5)
//! A watcher names a key, prefix or range, a start revision (or now) and `prev_kv`. The shard it
//! is connected to subscribes to every partition its range covers; each partition's replica
//! streams events from its version history (`>= start`, or `Compacted`), then from applies. The
//! shard merges them lazily from the partitions' version histories and releases events up to
//! `min(closed revision of every covered partition)`, in revision order, each once, holding
//! nothing past that minimum in memory (a partition without a leader delays the watch; it
//! does not make its buffer grow); a progress notification says "nothing more up to
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
//! Points the increment must settle (design review): a registration of (L, q) applies only if
//! L is live at its position in the meta log, and a revoke fans out to the partitions
//! registered at its own position; a revoke is a persisted *revoking* state that a new meta
//! leader resumes, and keep-alive / TTL report a lease gone only once every partition applied
//! it; leases are keyed by (id, grant revision) so a reused id never meets an old marker;
//! keep-alives are not logged, so a new leader resets every lease to its full TTL plus an
//! election timeout, and frequent leader changes need lease checkpoints (as etcd added);
//! session reads from a lagging follower can still show a revoked lease's keys, so the
//! "nowhere readable" guarantee covers linearizable and at-revision reads.
//!
//! # Session consistency (increment 7)
//! The client remembers, per partition, the highest revision it has seen (its writes' and
//! reads' header revisions) and sends it with a `session` read; any replica that has applied
//! that revision of the partition serves it locally (read-your-writes, monotonic reads).

use std::collections::VecDeque;
use std::ops::Range;

/// The meta group's key holding the revision ceiling (u64 little-endian; absent = 0).
pub const CEILING_KEY: &[u8] = b"oracle/ceiling";

/// How far one ceiling raise reaches by default: about a million revisions. A leader change
/// skips at most this many numbers; 2^64 / 2^20 leader changes is never reached.
pub const WINDOW_DEFAULT: u64 = 1 << 20;

/// The largest window accepted (a configuration bound: 2^24 leader changes still fit).
pub const WINDOW_MAX: u64 = 1 << 40;

/// Most revisions one request may ask for (a shard asks for one turn's writes).
pub const REQUEST_MAX: u64 = 1 << 20;

/// Most requests waiting at once; more are refused `Busy` (the shards retry).
pub const WAITING_MAX: usize = 4096;

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
    /// [`WAITING_MAX`] requests are waiting already.
    #[error("{WAITING_MAX} revision requests waiting; retry")]
    Busy,
    /// The ceiling found by a failed raise is below the raise's expected value: the meta
    /// group's replicated ceiling went back. A violated invariant: the node stops.
    #[error("revision ceiling went back: expected at least {expected}, found {found}")]
    CeilingWentBack {
        /// The value the raise compared against.
        expected: u64,
        /// The smaller value found.
        found: u64,
    },
    /// The 64-bit revision space is used up (not reachable in practice: a violated invariant).
    #[error("revision space exhausted at ceiling {ceiling}")]
    Exhausted {
        /// The ceiling that cannot be raised.
        ceiling: u64,
    },
}

/// A ceiling raise to propose in the meta group as a compare-and-set: if [`CEILING_KEY`]
/// holds `expected` (absent counts as 0), put `ceiling`. Only the leader that proposed it may
/// report its result ([`Oracle::raise_applied`]), from its own proposal's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raise {
    /// The value the ceiling must have for the raise to apply.
    pub expected: u64,
    /// The new ceiling (> `expected`).
    pub ceiling: u64,
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
/// core of shard 0 feeds it leadership changes, its raises' results and confirmation rounds,
/// and carries out what it asks for (a raise to propose, a round to start). It keeps no copy
/// of the replicated ceiling between terms: [`Oracle::became_leader`] is told the value, and
/// every raise is a compare-and-set whose success proves what it replaced (review of issue
/// 16's design, S1/S2: a cached copy could be stale after a snapshot install).
#[derive(Debug)]
pub struct Oracle<R> {
    window: u64,
    /// The term this node leads in (0: not leading).
    term: u64,
    /// The last term this node led in (terms only grow).
    last_led: u64,
    /// The ceiling this leader's own raise set (valid while `serving`).
    ceiling: u64,
    /// Set once a raise of this term applied: it may hand out `next..=ceiling`.
    serving: bool,
    next: u64,
    /// The raise this leader proposed and has no result for.
    raising: Option<Raise>,
    /// Rounds of this term: `started` counts those started, `confirmed` the highest confirmed.
    started: u64,
    confirmed: u64,
    waiting: VecDeque<Waiting<R>>,
}

impl<R> Oracle<R> {
    /// An oracle that raises the ceiling `window` revisions at a time (2..=[`WINDOW_MAX`]; the
    /// configuration is checked before this is called).
    pub fn new(window: u64) -> Oracle<R> {
        assert!(
            (2..=WINDOW_MAX).contains(&window),
            "revision window {window} outside 2..={WINDOW_MAX}"
        );
        Oracle {
            window,
            term: 0,
            last_led: 0,
            ceiling: 0,
            serving: false,
            next: 0,
            raising: None,
            started: 0,
            confirmed: 0,
            waiting: VecDeque::new(),
        }
    }

    /// Whether this oracle hands out revisions now.
    pub fn serving(&self) -> bool {
        self.serving
    }

    /// The raise proposed and not yet reported.
    pub fn raising(&self) -> Option<Raise> {
        self.raising
    }

    fn raise_from(&self, current: u64, wanted: u64) -> Result<Raise, OracleError> {
        let ceiling = current
            .checked_add(self.window.max(wanted))
            .filter(|c| *c < u64::MAX)
            .ok_or(OracleError::Exhausted { ceiling: current })?;
        Ok(Raise {
            expected: current,
            ceiling,
        })
    }

    /// This node became the meta group's leader in `term`; `current` is the ceiling its meta
    /// state machine holds now (best read after this term's no-op is applied: then the first
    /// raise rarely fails). Returns the raise to propose (rule 1). Nothing is handed out until
    /// a raise of this term applies.
    pub fn became_leader(&mut self, term: u64, current: u64) -> Result<Raise, OracleError> {
        assert!(
            term > self.last_led,
            "meta leader in term {term} after leading term {}",
            self.last_led
        );
        self.term = term;
        self.last_led = term;
        self.serving = false;
        self.next = current + 1;
        self.started = 0;
        self.confirmed = 0;
        let raise = self.raise_from(current, 0)?;
        self.raising = Some(raise);
        Ok(raise)
    }

    /// The fate of this leader's own raise proposal: `Ok(())` it applied (the ceiling is now
    /// `raise.ceiling`), `Err(found)` it was not applied (the compare found `found`, or the
    /// proposal was dropped and the state machine holds `found`). Returns a raise to propose
    /// next, if one is needed. A result for another raise than the one in flight, or after
    /// stepping down, is ignored.
    pub fn raise_applied(
        &mut self,
        raise: Raise,
        result: Result<(), u64>,
    ) -> Result<Option<Raise>, OracleError> {
        if self.term == 0 || self.raising != Some(raise) {
            return Ok(None);
        }
        self.raising = None;
        match result {
            Ok(()) => {
                // The compare held: the ceiling was `expected`, so every revision any leader
                // handed out is <= expected < next (rule 1).
                debug_assert!(self.next > raise.expected);
                self.ceiling = raise.ceiling;
                self.serving = true;
                Ok(self.want_raise()?)
            }
            Err(found) if found < raise.expected => Err(OracleError::CeilingWentBack {
                expected: raise.expected,
                found,
            }),
            Err(found) => {
                // Another leader raised the ceiling since this one read it: numbers up to
                // `found` may be handed out by it. Stop serving until a raise from `found`
                // applies.
                self.serving = false;
                self.next = self.next.max(found + 1);
                let wanted = self.wanted();
                let r = self.raise_from(found, wanted)?;
                self.raising = Some(r);
                Ok(Some(r))
            }
        }
    }

    fn wanted(&self) -> u64 {
        self.waiting.iter().map(|w| w.count).sum()
    }

    /// A raise to propose now (rule 2): serving, none in flight, and fewer than half a window
    /// (or fewer than the waiting requests need) left.
    fn want_raise(&mut self) -> Result<Option<Raise>, OracleError> {
        if !self.serving || self.raising.is_some() {
            return Ok(None);
        }
        let left = (self.ceiling + 1).saturating_sub(self.next);
        let wanted = self.wanted();
        if left >= self.window / 2 && left >= wanted {
            return Ok(None);
        }
        let r = self.raise_from(self.ceiling, wanted)?;
        self.raising = Some(r);
        Ok(Some(r))
    }

    /// This node no longer leads (or never did): returns every waiting request, to be answered
    /// `NotLeader` with the current leader's id as a hint.
    pub fn stepped_down(&mut self) -> Vec<R> {
        self.term = 0;
        self.serving = false;
        self.raising = None;
        self.waiting.drain(..).map(|w| w.requester).collect()
    }

    /// A request for `count` revisions arrived. Err when this node does not lead, the count
    /// is out of bounds, or too many requests wait.
    pub fn request(&mut self, requester: R, count: u64, leader: u64) -> Result<(), OracleError> {
        if count == 0 || count > REQUEST_MAX {
            return Err(OracleError::BadCount { count });
        }
        if self.term == 0 {
            return Err(OracleError::NotLeader { leader });
        }
        if self.waiting.len() >= WAITING_MAX {
            return Err(OracleError::Busy);
        }
        self.waiting.push_back(Waiting {
            requester,
            count,
            round: self.started + 1,
        });
        Ok(())
    }

    /// Whether a confirmation round should start now: a request waits for a round not yet
    /// started. The driver then starts one (a ReadIndex on partition 0, never answered from a
    /// lease) and calls [`Oracle::round_started`].
    pub fn wants_round(&self) -> bool {
        self.term != 0 && self.waiting.back().is_some_and(|w| w.round > self.started)
    }

    /// A confirmation round started: returns (term, round) to pass to `round_confirmed` or
    /// `round_failed`; None when this node does not lead.
    pub fn round_started(&mut self) -> Option<(u64, u64)> {
        if self.term == 0 {
            return None;
        }
        self.started += 1;
        Some((self.term, self.started))
    }

    /// Round `round` of `term` was confirmed: a quorum answered its heartbeat in that term.
    /// Returns the grants possible now and a raise to propose (rule 2). A round of another
    /// term than the one this node leads now changes nothing.
    #[allow(clippy::type_complexity)]
    pub fn round_confirmed(
        &mut self,
        term: u64,
        round: u64,
    ) -> Result<(Vec<Grant<R>>, Option<Raise>), OracleError> {
        if term == self.term && round > self.confirmed && round <= self.started {
            self.confirmed = round;
        }
        self.grant()
    }

    /// Round `round` of `term` failed (raftcore gave up on it without losing leadership): the
    /// requests waiting for it wait for the next round, which [`Oracle::wants_round`] now
    /// asks for.
    pub fn round_failed(&mut self, term: u64, round: u64) {
        if term != self.term || round <= self.confirmed {
            return;
        }
        let next = self.started + 1;
        for w in self.waiting.iter_mut() {
            if w.round <= round {
                w.round = next;
            }
        }
    }

    /// Makes the grants possible now: requests whose round is confirmed, in arrival order,
    /// each under the applied ceiling (rule 3); and a raise when one is needed (rule 2).
    #[allow(clippy::type_complexity)]
    pub fn grant(&mut self) -> Result<(Vec<Grant<R>>, Option<Raise>), OracleError> {
        let mut grants = Vec::new();
        if self.serving {
            while let Some(w) = self.waiting.front() {
                if w.round > self.confirmed || self.next + (w.count - 1) > self.ceiling {
                    break;
                }
                let w = self.waiting.pop_front().expect("front");
                let first = self.next;
                self.next += w.count;
                grants.push(Grant {
                    requester: w.requester,
                    revisions: first..self.next,
                });
            }
        }
        Ok((grants, self.want_raise()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftcore::SplitMix64;

    fn ok<T>(r: Result<T, OracleError>) -> T {
        r.expect("oracle error")
    }

    /// Leader of term 1 serves after its raise; requests wait for a round started after them.
    #[test]
    fn serves_only_after_its_raise_and_a_later_round() {
        let mut o: Oracle<u32> = Oracle::new(100);
        assert_eq!(
            o.request(1, 5, 2),
            Err(OracleError::NotLeader { leader: 2 })
        );
        let raise = ok(o.became_leader(1, 0));
        assert_eq!(
            raise,
            Raise {
                expected: 0,
                ceiling: 100
            }
        );
        o.request(1, 5, 1).unwrap();
        assert!(o.wants_round());
        let (t, r) = o.round_started().unwrap();
        // Confirmed, but the raise is not applied: nothing yet (rule 3).
        assert_eq!(ok(o.round_confirmed(t, r)).0, vec![]);
        assert_eq!(ok(o.raise_applied(raise, Ok(()))), None);
        let (g, _) = ok(o.grant());
        assert_eq!(
            g,
            vec![Grant {
                requester: 1,
                revisions: 1..6
            }]
        );
        // A request arriving after round 1 started waits for round 2 (rule 4).
        o.request(2, 1, 1).unwrap();
        assert_eq!(ok(o.round_confirmed(t, r)).0, vec![]);
        assert!(o.wants_round());
        let (t2, r2) = o.round_started().unwrap();
        assert_eq!(ok(o.round_confirmed(t2, r2)).0[0].revisions, 6..7);
    }

    /// The review's S1: a leader whose idea of the ceiling is stale (say, restored from an old
    /// snapshot) proposes a raise from the stale value; the compare fails, it learns the real
    /// ceiling and serves above it.
    #[test]
    fn a_raise_from_a_stale_ceiling_fails_and_is_redone_from_the_real_one() {
        let mut o: Oracle<u32> = Oracle::new(10);
        let stale = ok(o.became_leader(4, 0));
        o.request(1, 3, 4).unwrap();
        let (t, r) = o.round_started().unwrap();
        assert_eq!(ok(o.round_confirmed(t, r)).0, vec![]);
        // The meta group holds 50: the compare fails.
        let again = ok(o.raise_applied(stale, Err(50))).expect("a new raise");
        assert_eq!(
            again,
            Raise {
                expected: 50,
                ceiling: 60
            }
        );
        assert!(!o.serving());
        assert_eq!(ok(o.raise_applied(again, Ok(()))), None);
        let (g, _) = ok(o.grant());
        assert_eq!(g[0].revisions, 51..54);
        // A result for a raise that is not the one in flight is ignored.
        assert_eq!(ok(o.raise_applied(stale, Ok(()))), None);
    }

    #[test]
    fn a_ceiling_that_went_back_is_an_invariant_violation() {
        let mut o: Oracle<u32> = Oracle::new(10);
        let r = ok(o.became_leader(1, 50));
        assert_eq!(
            o.raise_applied(r, Err(49)),
            Err(OracleError::CeilingWentBack {
                expected: 50,
                found: 49
            })
        );
    }

    #[test]
    fn bad_counts_and_too_many_requests_are_refused() {
        let mut o: Oracle<u32> = Oracle::new(10);
        ok(o.became_leader(1, 0));
        assert_eq!(o.request(1, 0, 1), Err(OracleError::BadCount { count: 0 }));
        let huge = REQUEST_MAX + 1;
        assert_eq!(
            o.request(1, huge, 1),
            Err(OracleError::BadCount { count: huge })
        );
        for i in 0..WAITING_MAX {
            o.request(i as u32, 1, 1).unwrap();
        }
        assert_eq!(o.request(0, 1, 1), Err(OracleError::Busy));
    }

    #[test]
    fn raises_before_running_out_and_for_big_requests() {
        let mut o: Oracle<u32> = Oracle::new(10);
        let c = ok(o.became_leader(1, 0));
        assert_eq!(ok(o.raise_applied(c, Ok(()))), None);
        o.request(1, 4, 1).unwrap();
        let (t, r) = o.round_started().unwrap();
        let (g, raise) = ok(o.round_confirmed(t, r));
        assert_eq!(g[0].revisions, 1..5);
        // 6 left of a window of 10: no raise yet.
        assert_eq!(raise, None);
        o.request(2, 25, 1).unwrap();
        let (t, r) = o.round_started().unwrap();
        let (g, raise) = ok(o.round_confirmed(t, r));
        assert!(g.is_empty(), "25 do not fit under ceiling 10");
        let raise = raise.expect("a raise for the big request");
        assert_eq!(
            raise,
            Raise {
                expected: 10,
                ceiling: 35
            }
        );
        ok(o.raise_applied(raise, Ok(())));
        let (g, _) = ok(o.grant());
        assert_eq!(g[0].revisions, 5..30);
    }

    #[test]
    fn rounds_of_another_term_confirm_nothing_and_failed_rounds_are_redone() {
        let mut o: Oracle<u32> = Oracle::new(10);
        let r = ok(o.became_leader(1, 0));
        ok(o.raise_applied(r, Ok(())));
        o.request(1, 1, 1).unwrap();
        let (t1, r1) = o.round_started().unwrap();
        o.stepped_down();
        let r = ok(o.became_leader(3, 10));
        ok(o.raise_applied(r, Ok(())));
        o.request(2, 1, 1).unwrap();
        let (t, r) = o.round_started().unwrap();
        assert_eq!((t, r), (3, 1));
        // Round 1 of term 1 (its answer arriving late) is not round 1 of term 3.
        assert_eq!((t1, r1), (1, 1));
        assert!(ok(o.round_confirmed(t1, r1)).0.is_empty());
        o.round_failed(t, r);
        assert!(o.wants_round(), "a failed round is redone");
        assert!(ok(o.round_confirmed(t, r)).0.is_empty(), "round 1 failed");
        let (t, r) = o.round_started().unwrap();
        assert_eq!(ok(o.round_confirmed(t, r)).0[0].revisions, 11..12);
    }

    #[test]
    fn stepping_down_returns_every_waiting_request() {
        let mut o: Oracle<u32> = Oracle::new(10);
        ok(o.became_leader(3, 0));
        o.request(7, 1, 1).unwrap();
        o.request(8, 2, 1).unwrap();
        assert_eq!(o.stepped_down(), vec![7, 8]);
        assert!(!o.wants_round());
        assert_eq!(o.round_started(), None);
        assert_eq!(
            o.request(9, 1, 2),
            Err(OracleError::NotLeader { leader: 2 })
        );
    }

    /// One grant as the model saw it.
    struct Seen {
        arrived: u64,
        granted: u64,
        revisions: Range<u64>,
    }

    /// A model of the meta group around three oracles. Elections come at random; a deposed
    /// leader goes on serving from its state until it notices (a random later step), but its
    /// confirmation rounds are confirmed only if they started while its term was the newest
    /// (raftcore's ReadIndex: a quorum answering in that term, which cannot happen after a
    /// later election). Raises enter one meta log in proposal order and apply as
    /// compare-and-sets at random later steps; at an election, a random prefix of the older
    /// terms' unapplied raises stays in the log (committed by the new leader) and the rest is
    /// dropped. A new leader reads the ceiling at once, before the older raises apply (the
    /// early call the compare-and-set makes safe). Checks (R1 and R2 at the oracle): grants
    /// never overlap, and a grant made before another request arrived is below that
    /// request's grant.
    #[test]
    fn random_leader_changes_keep_revisions_unique_and_in_real_time_order() {
        let mut grants_total = 0u64;
        let mut elections_total = 0u64;
        for seed in 0..400u64 {
            let mut rng = SplitMix64::new(seed);
            let mut nodes: Vec<Oracle<u64>> = (0..3).map(|_| Oracle::new(8)).collect();
            // Per node: unconfirmed rounds (term, round, term that was newest at its start).
            let mut rounds: Vec<Vec<(u64, u64, u64)>> = vec![Vec::new(); 3];
            let mut ceiling = 0u64; // the meta state machine's value
            let mut log: VecDeque<(usize, u64, Raise)> = VecDeque::new();
            let mut term = 0u64;
            let mut arrived: std::collections::HashMap<u64, u64> = Default::default();
            let mut seen: Vec<Seen> = Vec::new();
            let mut next_req = 0u64;
            for step in 0..600u64 {
                let n = rng.below(3) as usize;
                match rng.below(12) {
                    0 => {
                        term += 1;
                        elections_total += 1;
                        let keep = log.iter().take_while(|_| rng.chance(600_000)).count();
                        log.truncate(keep);
                        if let Ok(r) = nodes[n].became_leader(term, ceiling) {
                            log.push_back((n, term, r));
                        }
                    }
                    1 => {
                        // A node notices it no longer leads.
                        if nodes[n].term != term {
                            nodes[n].stepped_down();
                        }
                    }
                    2 | 3 => {
                        if let Some((node, t, raise)) = log.pop_front() {
                            let result = if ceiling == raise.expected {
                                ceiling = raise.ceiling;
                                Ok(())
                            } else {
                                Err(ceiling)
                            };
                            if nodes[node].term == t {
                                if let Some(r) = ok(nodes[node].raise_applied(raise, result)) {
                                    log.push_back((node, t, r));
                                }
                            }
                        }
                    }
                    4..=7 => {
                        next_req += 1;
                        if nodes[n].request(next_req, 1 + rng.below(4), 0).is_ok() {
                            arrived.insert(next_req, step);
                        }
                    }
                    8 => {
                        if nodes[n].wants_round() {
                            let (t, r) = nodes[n].round_started().expect("leads");
                            rounds[n].push((t, r, term));
                        }
                    }
                    _ => {
                        if rounds[n].is_empty() {
                            continue;
                        }
                        let i = rng.below(rounds[n].len() as u64) as usize;
                        let (t, r, newest) = rounds[n].swap_remove(i);
                        if t != newest || rng.chance(100_000) {
                            nodes[n].round_failed(t, r);
                            continue;
                        }
                        let (grants, raise) = ok(nodes[n].round_confirmed(t, r));
                        if let Some(raise) = raise {
                            log.push_back((n, t, raise));
                        }
                        for g in grants {
                            assert!(g.revisions.end - 1 <= ceiling, "above the ceiling");
                            seen.push(Seen {
                                arrived: arrived[&g.requester],
                                granted: step,
                                revisions: g.revisions,
                            });
                        }
                    }
                }
            }
            grants_total += seen.len() as u64;
            let mut ranges: Vec<&Range<u64>> = seen.iter().map(|s| &s.revisions).collect();
            ranges.sort_by_key(|r| r.start);
            for w in ranges.windows(2) {
                assert!(
                    w[0].end <= w[1].start,
                    "seed {seed}: {:?} overlaps {:?}",
                    w[0],
                    w[1]
                );
            }
            for a in &seen {
                for b in &seen {
                    if a.granted < b.arrived {
                        assert!(
                            a.revisions.end <= b.revisions.start,
                            "seed {seed}: {:?} granted at step {} but {:?} (arrived at {}) \
                             is not above it",
                            a.revisions,
                            a.granted,
                            b.revisions,
                            b.arrived
                        );
                    }
                }
            }
        }
        assert!(
            grants_total > 5_000,
            "the model granted only {grants_total} times"
        );
        assert!(elections_total > 5_000, "only {elections_total} elections");
    }
}
