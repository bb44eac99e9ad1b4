//! The per-partition in-memory index shared by [`crate::Wal`] and [`crate::MemLog`]: the log
//! operations (append, truncate, compact) and their rules, over any per-entry value `T`.

use std::collections::VecDeque;

use crate::{HardState, SnapshotPoint, WalError};

/// One partition's log: entries `base..base+items.len()`, the snapshot point and hard state.
///
/// Invariants (checked by [`PartIndex::check`] in debug builds):
/// 1. `base == snapshot.index + 1` when there is a snapshot and no entry was appended past a gap
///    (see `replay_entries`); always `base > snapshot.index`.
/// 2. Indexes are contiguous: entry `i` of `items` has index `base + i`.
#[derive(Debug, Clone)]
pub(crate) struct PartIndex<T> {
    pub base: u64,
    pub items: VecDeque<T>,
    pub snapshot: Option<SnapshotPoint>,
    pub hard_state: Option<HardState>,
}

impl<T> Default for PartIndex<T> {
    fn default() -> Self {
        PartIndex {
            base: 1,
            items: VecDeque::new(),
            snapshot: None,
            hard_state: None,
        }
    }
}

impl<T> PartIndex<T> {
    /// The first index still held (or `last_index + 1` when empty).
    pub fn first_index(&self) -> u64 {
        self.base
    }

    /// The last index held, or the snapshot index, or 0.
    pub fn last_index(&self) -> u64 {
        self.base + self.items.len() as u64 - 1
    }

    pub fn get(&self, index: u64) -> Option<&T> {
        if index < self.base {
            return None;
        }
        self.items.get((index - self.base) as usize)
    }

    pub fn get_mut(&mut self, index: u64) -> Option<&mut T> {
        if index < self.base {
            return None;
        }
        self.items.get_mut((index - self.base) as usize)
    }

    /// Checks that an append starting at `first` is allowed (the next index after the last).
    pub fn check_append(&self, partition: u64, first: u64) -> Result<(), WalError> {
        if first != self.last_index() + 1 {
            return Err(WalError::NonContiguous {
                partition,
                expected: self.last_index() + 1,
                got: first,
            });
        }
        Ok(())
    }

    /// Checks that discarding entries `>= from` is allowed: not below the snapshot point, not
    /// past the end + 1.
    pub fn check_truncate(&self, partition: u64, from: u64) -> Result<(), WalError> {
        let floor = self.snapshot.map_or(0, |s| s.index);
        if from <= floor || from == 0 {
            return Err(WalError::Compacted {
                partition,
                index: from,
                first_index: self.base,
            });
        }
        if from > self.last_index() + 1 {
            return Err(WalError::Unavailable {
                partition,
                index: from,
                last_index: self.last_index(),
            });
        }
        Ok(())
    }

    /// Checks that compacting at `point` is allowed: it must not go backwards.
    pub fn check_compact(&self, partition: u64, point: SnapshotPoint) -> Result<(), WalError> {
        if let Some(s) = self.snapshot {
            if point.index < s.index {
                return Err(WalError::Compacted {
                    partition,
                    index: point.index,
                    first_index: self.base,
                });
            }
        }
        Ok(())
    }

    /// Discards entries `>= from` (returns them). Lenient: out-of-range is a no-op.
    pub fn truncate(&mut self, from: u64) -> Vec<T> {
        if from < self.base {
            // Every entry held is discarded and the next append starts at `from` (callers
            // never truncate at or below a snapshot point, so nothing below `base` exists
            // elsewhere). Keeping `base` made a recovered log that starts later than `from`
            // report first/last `base`/`base - 1` instead of `from`/`from - 1`.
            let dropped = self.items.drain(..).collect();
            self.base = from;
            return dropped;
        }
        let keep = (from - self.base) as usize;
        if keep >= self.items.len() {
            return Vec::new();
        }
        self.items.drain(keep..).collect()
    }

    /// Drops entries `<= point.index` and records the snapshot point. If the log ended before
    /// `point.index`, the log becomes empty and the next append starts at `point.index + 1`.
    /// Returns the dropped entries.
    pub fn compact(&mut self, point: SnapshotPoint) -> Vec<T> {
        let dropped: Vec<T> = if point.index < self.base {
            Vec::new()
        } else if point.index > self.last_index() {
            let d = self.items.drain(..).collect();
            self.base = point.index + 1;
            d
        } else {
            let n = (point.index + 1 - self.base) as usize;
            let d = self.items.drain(..n).collect();
            self.base = point.index + 1;
            d
        };
        if self.snapshot.is_none_or(|s| s.index <= point.index) {
            self.snapshot = Some(point);
        }
        dropped
    }

    /// Appends items starting at `first` (caller checked [`Self::check_append`]).
    pub fn append(&mut self, first: u64, items: impl IntoIterator<Item = T>) {
        debug_assert_eq!(first, self.last_index() + 1);
        if self.items.is_empty() {
            self.base = first;
        }
        self.items.extend(items);
    }

    /// Recovery's lenient append: a record starting at `first` replaces anything `>= first`;
    /// a gap (`first > last + 1`) can only mean the entries before it lived in deleted
    /// segments, which is allowed only because they were compacted, so the log restarts at
    /// `first`. Entries at or below the snapshot point are skipped. Returns dropped items.
    pub fn replay_entries(&mut self, first: u64, items: Vec<T>) -> Vec<T> {
        let mut dropped = Vec::new();
        let floor = self.snapshot.map_or(0, |s| s.index);
        let mut first = first;
        let mut items: VecDeque<T> = items.into();
        while first <= floor {
            if items.pop_front().is_none() {
                return dropped;
            }
            first += 1;
        }
        if items.is_empty() {
            return dropped;
        }
        if first <= self.last_index() {
            dropped.extend(self.truncate(first));
        } else if first > self.last_index() + 1 {
            dropped.extend(self.items.drain(..));
        }
        if self.items.is_empty() {
            self.base = first;
        }
        self.items.extend(items);
        dropped
    }

    /// Debug check of the invariants listed on the type.
    pub fn check(&self) {
        if let Some(s) = self.snapshot {
            debug_assert!(
                self.base > s.index,
                "base {} <= snapshot {}",
                self.base,
                s.index
            );
        }
        debug_assert!(self.base >= 1);
    }
}
