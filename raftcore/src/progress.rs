//! The leader's view of each follower (Probe / Replicate / Snapshot, thesis §10.2 pipelining),
//! and quorum arithmetic for simple and joint configurations (thesis §4.3).

use std::collections::VecDeque;

use crate::types::ConfState;

/// How the leader currently sends entries to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Position unknown: one Append at a time, wait for the answer (after a rejection, at start).
    Probe,
    /// Position known: stream Appends optimistically, bounded by the in-flight window.
    Replicate,
    /// Follower needs entries the leader compacted: a snapshot is being sent in chunks.
    Snapshot,
}

/// A bounded window of in-flight Append messages, each remembered by its last index.
#[derive(Clone, Debug)]
pub(crate) struct Inflights {
    last_indexes: VecDeque<u64>,
    cap: usize,
}

impl Inflights {
    pub(crate) fn new(cap: usize) -> Self {
        Inflights {
            last_indexes: VecDeque::with_capacity(cap.min(1024)),
            cap,
        }
    }
    #[inline]
    pub(crate) fn full(&self) -> bool {
        self.last_indexes.len() >= self.cap
    }
    #[inline]
    pub(crate) fn add(&mut self, last: u64) {
        self.last_indexes.push_back(last);
    }
    /// Frees every message whose last index is `<= index` (acknowledged).
    #[inline]
    pub(crate) fn free_to(&mut self, index: u64) {
        while let Some(&f) = self.last_indexes.front() {
            if f > index {
                break;
            }
            self.last_indexes.pop_front();
        }
    }
    pub(crate) fn reset(&mut self) {
        self.last_indexes.clear();
    }
    pub(crate) fn len(&self) -> usize {
        self.last_indexes.len()
    }
}

/// What the leader knows about one replica.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    pub(crate) id: u64,
    /// Highest index known replicated (and durable) on the replica.
    pub(crate) matched: u64,
    /// Next index to send.
    pub(crate) next: u64,
    pub(crate) state: ProgressState,
    /// Probe: an Append is outstanding; wait for its answer or the next heartbeat response.
    pub(crate) probe_sent: bool,
    pub(crate) inflights: Inflights,
    /// Heard from since the last CheckQuorum round.
    pub(crate) recent_active: bool,
    /// Snapshot state: index of the snapshot being sent.
    pub(crate) snap_index: u64,
    /// Snapshot state: next byte offset to send.
    pub(crate) snap_next_offset: u64,
    /// Snapshot state: bytes acknowledged.
    pub(crate) snap_acked_offset: u64,
    /// Snapshot state: `snap_acked_offset` at the previous heartbeat (stall detection).
    pub(crate) snap_acked_at_last_heartbeat: u64,
    /// Snapshot state: heartbeats in a row without chunk progress.
    pub(crate) snap_stall_heartbeats: u32,
    /// Highest heartbeat round this replica answered in the current term.
    pub(crate) round_acked: u64,
    /// Commit index last sent to this replica.
    pub(crate) commit_sent: u64,
    /// An append acknowledgement arrived since the last heartbeat broadcast.
    pub(crate) acked_since_heartbeat: bool,
}

impl Progress {
    pub(crate) fn new(id: u64, next: u64, inflight_cap: usize) -> Self {
        Progress {
            id,
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::new(inflight_cap),
            recent_active: false,
            snap_index: 0,
            snap_next_offset: 0,
            snap_acked_offset: 0,
            snap_acked_at_last_heartbeat: 0,
            snap_stall_heartbeats: 0,
            round_acked: 0,
            commit_sent: 0,
            acked_since_heartbeat: false,
        }
    }

    pub(crate) fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            self.next = (self.matched + 1).max(self.snap_index + 1);
        } else {
            self.next = self.matched + 1;
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflights.reset();
        self.snap_index = 0;
    }

    pub(crate) fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next = self.matched + 1;
        self.probe_sent = false;
        self.inflights.reset();
        self.snap_index = 0;
    }

    pub(crate) fn become_snapshot(&mut self, snap_index: u64) {
        self.state = ProgressState::Snapshot;
        self.snap_index = snap_index;
        self.snap_next_offset = 0;
        self.snap_acked_offset = 0;
        self.snap_acked_at_last_heartbeat = 0;
        self.snap_stall_heartbeats = 0;
        self.inflights.reset();
        self.probe_sent = false;
    }

    /// May the leader send an Append now?
    pub(crate) fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }

    /// Acknowledgement up to `index`. Returns true if it told us something new.
    pub(crate) fn maybe_update(&mut self, index: u64) -> bool {
        let mut updated = false;
        if index > self.matched {
            self.matched = index;
            updated = true;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        updated
    }

    /// A rejection of the Append whose previous index was `rejected`; `hint` is where to
    /// resume. Returns false if the rejection is stale.
    pub(crate) fn maybe_decr_to(&mut self, rejected: u64, hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            // Stale if it rejects something already matched.
            if rejected <= self.matched {
                return false;
            }
            self.next = (hint + 1).min(rejected).max(self.matched + 1);
            self.become_probe_keep_next();
            return true;
        }
        // Probe: only the answer to the outstanding probe counts.
        if self.next == 0 || self.next - 1 != rejected {
            return false;
        }
        self.next = (hint + 1).min(rejected).max(self.matched + 1);
        self.probe_sent = false;
        true
    }

    fn become_probe_keep_next(&mut self) {
        let next = self.next;
        self.become_probe();
        self.next = next;
    }
}

/// Result of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VoteResult {
    Won,
    Lost,
    Pending,
}

/// The index a majority of `voters` has reached (`u64::MAX` for an empty set, so an empty
/// outgoing half never holds a joint decision back).
pub(crate) fn majority_index(
    voters: &[u64],
    matched: impl Fn(u64) -> u64,
    scratch: &mut Vec<u64>,
) -> u64 {
    if voters.is_empty() {
        return u64::MAX;
    }
    scratch.clear();
    scratch.extend(voters.iter().map(|&v| matched(v)));
    scratch.sort_unstable_by(|a, b| b.cmp(a));
    scratch[voters.len() / 2]
}

/// Joint commit index (thesis §4.3: agreement needs separate majorities of both halves).
pub(crate) fn committed_index(
    conf: &ConfState,
    matched: impl Fn(u64) -> u64,
    scratch: &mut Vec<u64>,
) -> u64 {
    let a = majority_index(&conf.voters, &matched, scratch);
    let b = majority_index(&conf.voters_outgoing, &matched, scratch);
    a.min(b)
}

fn majority_vote(voters: &[u64], vote: &impl Fn(u64) -> Option<bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut yes, mut missing) = (0, 0);
    for &v in voters {
        match vote(v) {
            Some(true) => yes += 1,
            None => missing += 1,
            Some(false) => {}
        }
    }
    let q = voters.len() / 2 + 1;
    if yes >= q {
        VoteResult::Won
    } else if yes + missing >= q {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// Joint vote result: won only with both majorities, lost if either is lost.
pub(crate) fn vote_result(conf: &ConfState, vote: impl Fn(u64) -> Option<bool>) -> VoteResult {
    let a = majority_vote(&conf.voters, &vote);
    let b = majority_vote(&conf.voters_outgoing, &vote);
    match (a, b) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joint_commit_index_is_the_min_of_both_majorities() {
        // Thesis §4.3: in C_old,new agreement needs a majority of each configuration.
        let conf = ConfState {
            voters: vec![1, 2, 3],
            voters_outgoing: vec![3, 4, 5],
            ..Default::default()
        };
        let matched = |id: u64| [0, 10, 9, 8, 2, 1][id as usize];
        let mut s = Vec::new();
        assert_eq!(majority_index(&conf.voters, matched, &mut s), 9);
        assert_eq!(majority_index(&conf.voters_outgoing, matched, &mut s), 2);
        assert_eq!(committed_index(&conf, matched, &mut s), 2);
    }

    #[test]
    fn vote_needs_both_majorities_and_loses_early() {
        let conf = ConfState {
            voters: vec![1, 2, 3],
            voters_outgoing: vec![1, 4, 5],
            ..Default::default()
        };
        let v = |yes: &[u64], no: &[u64]| {
            let (yes, no) = (yes.to_vec(), no.to_vec());
            vote_result(&conf, move |id| {
                if yes.contains(&id) {
                    Some(true)
                } else if no.contains(&id) {
                    Some(false)
                } else {
                    None
                }
            })
        };
        assert_eq!(v(&[1, 2], &[]), VoteResult::Pending);
        assert_eq!(v(&[1, 2, 4], &[]), VoteResult::Won);
        assert_eq!(v(&[1, 2], &[4, 5]), VoteResult::Lost);
    }

    #[test]
    fn inflight_window_frees_in_order() {
        let mut f = Inflights::new(3);
        f.add(5);
        f.add(9);
        f.add(12);
        assert!(f.full());
        f.free_to(9);
        assert_eq!(f.len(), 1);
        assert!(!f.full());
    }

    #[test]
    fn stale_rejection_is_ignored_in_replicate() {
        let mut p = Progress::new(2, 11, 8);
        p.maybe_update(10);
        p.become_replicate();
        p.next = 20;
        assert!(!p.maybe_decr_to(9, 3), "rejects an index already matched");
        assert!(p.maybe_decr_to(15, 12));
        assert_eq!(p.state, ProgressState::Probe);
        assert_eq!(p.next, 13);
    }
}
