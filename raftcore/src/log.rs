//! The in-memory Raft log: every entry after the last snapshot / compaction point.
//!
//! Invariants, numbered as the messages of [`RaftLog::check`] name them. `RawNode` checks them
//! after every input in test and debug builds (`RaftLog::check(false)`: the O(1) form of L1
//! and L2), and the simulator checks them in full after every tick:
//! - L1. `entries[i].index == snap_index + 1 + i` (contiguous, starting right after the
//!   snapshot);
//! - L2. terms never decrease along the log, and `entries[0].term >= snap_term`;
//! - L3. `snap_index <= committed <= last_index()`: a commit index names an entry this log
//!   holds (or the snapshot covers); etcd's `commitTo` panics on the same condition;
//! - L4. `apply_next - 1 <= committed` and `apply_next - 1 <= max(persisted, snap_index)`:
//!   nothing is handed out to apply before it is committed and durable locally;
//! - L5. `unstable_from <= last_index() + 1`: entries at or after it are not yet in a Ready;
//! - L6. `snap_index <= applied <= apply_next - 1`: the caller applied the snapshot, and never
//!   more than it was handed (with L4: applied <= committed);
//! - L7. `persisted <= last_index()`: what is durable and consistent is part of this log.

use std::collections::VecDeque;

use crate::types::Entry;

/// The log of one node.
#[derive(Debug)]
pub(crate) struct RaftLog {
    pub(crate) snap_index: u64,
    pub(crate) snap_term: u64,
    entries: VecDeque<Entry>,
    /// Highest index known committed (paper Figure 2, commitIndex).
    pub(crate) committed: u64,
    /// Highest index that is durable locally and consistent with this log.
    pub(crate) persisted: u64,
    /// First index not yet handed to the caller in a Ready.
    pub(crate) unstable_from: u64,
    /// Next committed index to hand out for applying.
    pub(crate) apply_next: u64,
    /// Highest index the caller reported applied.
    pub(crate) applied: u64,
}

impl RaftLog {
    /// A log that starts after a snapshot at (`snap_index`, `snap_term`); `entries` are durable.
    /// The caller checks `commit <= last` (input from disk is an error, not a panic); a durable
    /// commit below the snapshot is raised to it (the snapshot covers only committed entries).
    pub(crate) fn new(snap_index: u64, snap_term: u64, entries: Vec<Entry>, commit: u64) -> Self {
        let last = snap_index + entries.len() as u64;
        assert!(
            commit <= last,
            "tocommit({commit}) is out of range [lastIndex({last})]"
        );
        let committed = commit.max(snap_index);
        RaftLog {
            snap_index,
            snap_term,
            entries: entries.into(),
            committed,
            persisted: last,
            unstable_from: last + 1,
            apply_next: snap_index + 1,
            applied: snap_index,
        }
    }

    #[inline]
    pub(crate) fn first_index(&self) -> u64 {
        self.snap_index + 1
    }

    #[inline]
    pub(crate) fn last_index(&self) -> u64 {
        self.snap_index + self.entries.len() as u64
    }

    #[inline]
    pub(crate) fn last_term(&self) -> u64 {
        self.entries.back().map_or(self.snap_term, |e| e.term)
    }

    /// Term of the entry at `index`; `None` if compacted away or beyond the end.
    #[inline]
    pub(crate) fn term(&self, index: u64) -> Option<u64> {
        if index == self.snap_index {
            return Some(self.snap_term);
        }
        if index < self.snap_index || index > self.last_index() {
            return None;
        }
        Some(self.entries[(index - self.snap_index - 1) as usize].term)
    }

    #[inline]
    pub(crate) fn entry(&self, index: u64) -> Option<&Entry> {
        if index <= self.snap_index || index > self.last_index() {
            return None;
        }
        Some(&self.entries[(index - self.snap_index - 1) as usize])
    }

    #[inline]
    pub(crate) fn match_term(&self, index: u64, term: u64) -> bool {
        self.term(index) == Some(term)
    }

    /// Paper §5.4.1: a candidate's log is at least as up to date as ours if its last term is
    /// higher, or the last terms are equal and its log is at least as long.
    pub(crate) fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Appends entries created by this node as leader (contiguous after `last_index`).
    pub(crate) fn append_leader(&mut self, entries: impl IntoIterator<Item = Entry>) {
        for e in entries {
            debug_assert_eq!(e.index, self.last_index() + 1);
            self.entries.push_back(e);
        }
    }

    /// Follower side of AppendEntries (paper §5.3). `prev` must already match. Returns the
    /// index at which a conflicting suffix was truncated, if one was.
    pub(crate) fn append_follower(&mut self, entries: Vec<Entry>) -> Option<u64> {
        // Find the first entry that is not already in the log with the same term.
        let mut skip = 0;
        for e in &entries {
            match self.term(e.index) {
                Some(t) if t == e.term => skip += 1,
                _ => break,
            }
        }
        let first = entries.get(skip)?;
        let mut truncated = None;
        if first.index <= self.last_index() {
            // §5.3: "If an existing entry conflicts with a new one (same index but different
            // terms), delete the existing entry and all that follow it."
            let keep = (first.index - self.snap_index - 1) as usize;
            self.entries.truncate(keep);
            truncated = Some(first.index);
            self.unstable_from = self.unstable_from.min(first.index);
            self.persisted = self.persisted.min(first.index - 1);
        }
        self.entries.extend(entries.into_iter().skip(skip));
        truncated
    }

    /// First index in `[lo, hi]` range search used for fast backtracking: the largest index
    /// `<= index` whose term is `<= term` (thesis §5.3 optimisation, as in etcd's
    /// findConflictByTerm). Returns (index, term).
    pub(crate) fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut i = index.min(self.last_index());
        while i > self.snap_index {
            let t = self.term(i).unwrap_or(0);
            if t <= term {
                return (i, t);
            }
            i -= 1;
        }
        (self.snap_index, self.snap_term)
    }

    /// Entries in `[lo, last]`, at most `count_max` of them and at most `bytes_max` payload
    /// bytes (at least one entry if any). `lo` must be >= `first_index()`.
    pub(crate) fn slice(&self, lo: u64, count_max: usize, bytes_max: u64) -> Vec<Entry> {
        let last = self.last_index();
        if lo > last || lo <= self.snap_index {
            return Vec::new();
        }
        let start = (lo - self.snap_index - 1) as usize;
        let avail = (last - lo + 1) as usize;
        let mut n = avail.min(count_max);
        let mut bytes = 0u64;
        for (i, e) in self.entries.range(start..start + n).enumerate() {
            bytes += e.size_bytes();
            if bytes > bytes_max && i > 0 {
                n = i;
                break;
            }
        }
        let mut out = Vec::with_capacity(n);
        out.extend(self.entries.range(start..start + n).cloned());
        out
    }

    /// Entries not yet handed out in a Ready (and marks them handed out).
    pub(crate) fn take_unstable(&mut self) -> Vec<Entry> {
        let last = self.last_index();
        if self.unstable_from > last {
            return Vec::new();
        }
        let lo = self.unstable_from.max(self.first_index());
        let start = (lo - self.snap_index - 1) as usize;
        let out: Vec<Entry> = self.entries.range(start..).cloned().collect();
        self.unstable_from = last + 1;
        out
    }

    pub(crate) fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// Highest index that may be handed out for applying: committed and durable locally.
    #[inline]
    pub(crate) fn applicable_to(&self) -> u64 {
        self.committed.min(self.persisted.max(self.snap_index))
    }

    pub(crate) fn has_applicable(&self) -> bool {
        self.apply_next <= self.applicable_to()
    }

    /// Committed, durable entries not yet handed out, up to `bytes_max` (at least one).
    pub(crate) fn take_applicable(&mut self, bytes_max: u64) -> Vec<Entry> {
        let hi = self.applicable_to();
        if self.apply_next > hi {
            return Vec::new();
        }
        let lo = self.apply_next;
        let out = self.slice(lo, (hi - lo + 1) as usize, bytes_max);
        self.apply_next = lo + out.len() as u64;
        out
    }

    /// Raises the commit index to `index` (never lowers it). `index` beyond the last entry is a
    /// bug of the caller, not an input to clamp: a node cannot know an entry committed that it
    /// does not hold (L3; etcd's `commitTo` panics the same way). Callers that take a commit
    /// index from the network bound it where the paper says how (Figure 2, AppendEntries rule 5:
    /// `min(leaderCommit, index of last new entry)`).
    pub(crate) fn commit_to(&mut self, index: u64) -> bool {
        assert!(
            index <= self.last_index(),
            "tocommit({index}) is out of range [lastIndex({})]",
            self.last_index()
        );
        if index > self.committed {
            self.committed = index;
            true
        } else {
            false
        }
    }

    /// Replaces the whole log by a snapshot received from the leader. The caller installs it
    /// only when the log does not already hold `(index, term)`, so the local entries between
    /// the old commit index and `index` may differ from the snapshot's: until the snapshot's
    /// Ready is durable, only the committed prefix (equal on every node, Log Matching) is
    /// durable and consistent with the new log (L7's meaning). `on_persisted` raises
    /// `persisted` to `index` once it is.
    pub(crate) fn restore(&mut self, index: u64, term: u64) {
        debug_assert!(
            self.term(index) != Some(term),
            "restore of a snapshot the log already matches"
        );
        self.persisted = self.persisted.min(self.committed).min(index);
        self.entries.clear();
        self.snap_index = index;
        self.snap_term = term;
        self.committed = index;
        self.unstable_from = index + 1;
        self.apply_next = index + 1;
        self.applied = self.applied.max(index);
    }

    /// Drops entries up to and including `index` (which is covered by a snapshot now).
    pub(crate) fn compact(&mut self, index: u64) {
        if index <= self.snap_index || index > self.last_index() {
            return;
        }
        let term = self.term(index).unwrap_or(0);
        let n = (index - self.snap_index) as usize;
        self.entries.drain(..n);
        self.snap_index = index;
        self.snap_term = term;
    }

    /// Checks the invariants listed at the top of this file; `Err` names the first violated one
    /// (`"L3: ..."`). `full` also walks every entry for L1 and L2 (O(n)); without it only the
    /// first and last entries are checked (O(1)), which is what runs after every input.
    pub(crate) fn check(&self, full: bool) -> Result<(), String> {
        if full {
            let mut prev_term = self.snap_term;
            for (i, e) in self.entries.iter().enumerate() {
                if e.index != self.snap_index + 1 + i as u64 {
                    return Err(format!("L1: entry {} at position {}", e.index, i));
                }
                if e.term < prev_term {
                    return Err(format!("L2: term goes down at index {}", e.index));
                }
                prev_term = e.term;
            }
        } else if let (Some(f), Some(b)) = (self.entries.front(), self.entries.back()) {
            if f.index != self.snap_index + 1
                || b.index != self.snap_index + self.entries.len() as u64
            {
                return Err(format!(
                    "L1: entries {}..={} after snapshot {} with {} entries",
                    f.index,
                    b.index,
                    self.snap_index,
                    self.entries.len()
                ));
            }
            if f.term < self.snap_term || b.term < f.term {
                return Err(format!(
                    "L2: terms {} (first) and {} (last) after snapshot term {}",
                    f.term, b.term, self.snap_term
                ));
            }
        }
        if self.committed < self.snap_index || self.committed > self.last_index() {
            return Err(format!(
                "L3: committed {} outside [{}, {}]",
                self.committed,
                self.snap_index,
                self.last_index()
            ));
        }
        if self.apply_next > self.committed + 1 {
            return Err(format!(
                "L4: apply_next {} beyond committed {}",
                self.apply_next, self.committed
            ));
        }
        if self.apply_next > self.persisted.max(self.snap_index) + 1 {
            return Err(format!(
                "L4: apply_next {} beyond persisted {}",
                self.apply_next, self.persisted
            ));
        }
        if self.unstable_from > self.last_index() + 1 {
            return Err(format!(
                "L5: unstable_from {} beyond last index {} + 1",
                self.unstable_from,
                self.last_index()
            ));
        }
        if self.applied < self.snap_index || self.applied + 1 > self.apply_next {
            return Err(format!(
                "L6: applied {} outside [snapshot {}, apply_next {} - 1]",
                self.applied, self.snap_index, self.apply_next
            ));
        }
        if self.persisted > self.last_index() {
            return Err(format!(
                "L7: persisted {} beyond last index {}",
                self.persisted,
                self.last_index()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn e(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            kind: crate::types::EntryKind::Normal,
            data: Bytes::from_static(b"0123456789"),
        }
    }

    #[test]
    fn follower_append_truncates_only_the_conflicting_suffix() {
        // Paper §5.3: delete the conflicting entry and all that follow; keep matching ones.
        let mut log = RaftLog::new(0, 0, vec![e(1, 1), e(2, 1), e(3, 2), e(4, 2)], 1);
        assert_eq!(log.append_follower(vec![e(2, 1), e(3, 3)]), Some(3));
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.term(3), Some(3));
        assert_eq!(
            log.persisted, 2,
            "durable prefix shrinks to before the conflict"
        );
        assert_eq!(log.unstable_from, 3);
        // Re-sending entries we already have changes nothing.
        assert_eq!(log.append_follower(vec![e(1, 1), e(2, 1)]), None);
        assert_eq!(log.last_index(), 3);
        log.check(true).unwrap();
    }

    #[test]
    fn up_to_date_compares_last_term_then_length() {
        // Paper §5.4.1.
        let log = RaftLog::new(0, 0, vec![e(1, 1), e(2, 2)], 0);
        assert!(log.is_up_to_date(1, 3));
        assert!(log.is_up_to_date(2, 2));
        assert!(!log.is_up_to_date(1, 2));
        assert!(!log.is_up_to_date(9, 1));
    }

    #[test]
    fn apply_waits_for_commit_and_local_durability() {
        let mut log = RaftLog::new(0, 0, vec![], 0);
        log.append_leader(vec![e(1, 1), e(2, 1), e(3, 1)]);
        log.commit_to(3);
        assert!(!log.has_applicable(), "nothing durable yet");
        log.persisted = 2;
        let out = log.take_applicable(u64::MAX);
        assert_eq!(out.len(), 2);
        log.check(true).unwrap();
    }

    #[test]
    fn slice_respects_count_and_bytes_but_sends_at_least_one() {
        let log = RaftLog::new(0, 0, (1..=10).map(|i| e(i, 1)).collect(), 0);
        assert_eq!(log.slice(1, 3, u64::MAX).len(), 3);
        assert_eq!(log.slice(1, 100, 70).len(), 2); // 34 bytes each
        assert_eq!(log.slice(1, 100, 1).len(), 1);
        assert_eq!(log.slice(11, 100, 100).len(), 0);
    }

    #[test]
    fn compaction_keeps_terms_and_invariants() {
        let mut log = RaftLog::new(0, 0, (1..=10).map(|i| e(i, i / 4 + 1)).collect(), 10);
        assert_eq!(log.take_applicable(u64::MAX).len(), 10);
        log.applied = 10;
        log.compact(6);
        assert_eq!(log.first_index(), 7);
        assert_eq!(log.term(6), Some(2));
        assert_eq!(log.term(5), None);
        log.check(true).unwrap();
        assert_eq!(log.find_conflict_by_term(10, 2), (7, 2));
        assert_eq!(
            log.find_conflict_by_term(10, 1),
            (6, 2),
            "stops at the snapshot"
        );
    }
}
