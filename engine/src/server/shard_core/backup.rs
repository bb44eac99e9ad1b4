//! Backup copies: consistent copies of a partition handed out in chunks (`Op::Backup`,
//! `corum ctl backup`).
//!
//! A copy is the partition's snapshot file (`crate::snapshot` format) encoded from the state
//! machine when a linearizable read of the partition is served (a read index confirmed by a
//! quorum, thesis §6.4): it holds every write acknowledged before the backup request was sent
//! and nothing uncommitted. The first request (`index` 0, `offset` 0) takes the copy and gets
//! its first chunk; the client then asks for `(index, offset)` until it has `total_bytes`.
//!
//! The copy stays in this replica's memory between chunks. Bounds:
//! - at most [`COPIES_PER_PARTITION_MAX`] copies per partition (the one unused longest is
//!   dropped first);
//! - at most `tuning.backup_copy_bytes_max` of copies per shard, counting the partition's data
//!   before it is encoded: a new copy past it is answered `Busy` (the client backs off), and
//!   a partition whose data alone is larger is answered `InvalidArgument` (waiting would not
//!   help: raise the limit);
//! - a new copy of one partition at most every [`NEW_COPY_INTERVAL_TICKS`] unless nothing was
//!   applied since the last (then the last is reused): a client asking again and again gets
//!   `Busy` instead of a full encode each time;
//! - a copy is dropped when no chunk of it was asked for within `tuning.backup_copy_ttl_ms`,
//!   or [`GRACE_TICKS`] after its last chunk was served (another reader of the same copy
//!   keeps it alive by asking).
//!
//! TODO(issue 13/17): encoding runs on the shard thread; a multi-GB partition would stall its
//! shard's heartbeats for longer than an election timeout. Encode off the shard (the same
//! TODO as `crate::snapshot`).
//!
//! A chunk asked of a copy this replica does not hold is answered `NotLeader` when this
//! replica does not lead (the client follows the hint), else `InvalidArgument`: the client
//! takes a new copy (`wire::client::Client::backup_partition`). Encoding runs on the shard,
//! like a periodic snapshot: one pass over the partition's map.

use bytes::Bytes;
use raftcore::Role;
use wire::{Outcome, Response, ResponseHeader, ServerError as WireError};

use super::partition::Partition;
use crate::server::convert;
use crate::server::requests::{error_response, not_leader, ok_response};
use crate::snapshot;

/// Copies kept per partition at once.
pub const COPIES_PER_PARTITION_MAX: usize = 2;
/// Ticks between two new copies of one partition (1 s with 10 ms ticks).
pub const NEW_COPY_INTERVAL_TICKS: u64 = 100;
/// Ticks a copy is kept after its last chunk was served (2 s with 10 ms ticks).
pub const GRACE_TICKS: u64 = 200;

/// A copy of a partition held for a backup.
pub struct BackupCopy {
    /// Applied index and term of the copy.
    pub index: u64,
    pub term: u64,
    /// The partition's revision in it.
    pub revision: u64,
    /// The snapshot file's bytes.
    pub data: Bytes,
    /// Dropped at this tick unless a chunk is asked for before.
    pub expires: u64,
    /// The tick it was taken.
    pub taken: u64,
}

/// Limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Bytes of one chunk, so the answer fits a frame.
    pub chunk_max: usize,
    /// The current tick.
    pub now: u64,
    /// Ticks an unused copy is kept.
    pub ttl_ticks: u64,
    /// Bytes of copies the shard may hold (all partitions).
    pub bytes_max: u64,
}

/// What to do with a request for a new copy (`index` 0) of a partition ([`admit`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// The copy at this position was taken at the same applied index: serve it again.
    Reuse(usize),
    /// Take a new copy.
    Take,
    /// Not now (the client backs off and asks again).
    Busy(&'static str),
    /// Never with these limits.
    Refuse(String),
}

/// Whether a new copy of a partition at `applied` with `data_bytes` of data may be taken
/// while the shard holds `held` bytes of copies (module docs, bounds).
pub fn admit(copies: &[BackupCopy], applied: u64, data_bytes: u64, held: u64, b: &Bounds) -> Admit {
    if let Some(i) = copies.iter().position(|c| c.index == applied) {
        return Admit::Reuse(i);
    }
    if data_bytes > b.bytes_max {
        return Admit::Refuse(format!(
            "the partition holds {data_bytes} bytes, more than \
             tuning.backup_copy_bytes_max ({}) allows one shard to hold in backup copies; \
             raise it",
            b.bytes_max
        ));
    }
    if copies
        .iter()
        .any(|c| b.now < c.taken + NEW_COPY_INTERVAL_TICKS)
    {
        return Admit::Busy("a copy of this partition was taken less than a second ago");
    }
    // The copy that a new one would evict no longer counts.
    let evicted = if copies.len() >= COPIES_PER_PARTITION_MAX {
        lru(copies).map_or(0, |i| copies[i].data.len() as u64)
    } else {
        0
    };
    if (held - evicted).saturating_add(data_bytes) > b.bytes_max {
        return Admit::Busy("the shard holds tuning.backup_copy_bytes_max of backup copies");
    }
    Admit::Take
}

/// The copy unused longest (the first to expire).
fn lru(copies: &[BackupCopy]) -> Option<usize> {
    (0..copies.len()).min_by_key(|&i| copies[i].expires)
}

/// Adds `copy`, first dropping the copy unused longest when the partition holds
/// [`COPIES_PER_PARTITION_MAX`]; `held` as in [`serve`]. Returns its position.
pub fn insert(copies: &mut Vec<BackupCopy>, copy: BackupCopy, held: &mut u64) -> usize {
    if copies.len() >= COPIES_PER_PARTITION_MAX {
        let i = lru(copies).expect("at least one copy");
        *held -= copies.remove(i).data.len() as u64;
    }
    *held += copy.data.len() as u64;
    copies.push(copy);
    copies.len() - 1
}

/// Bytes `offset..` of `copy` (at most `b.chunk_max`), and its new expiry: `b.ttl_ticks`
/// from now, or [`GRACE_TICKS`] after the last chunk.
pub fn chunk(copy: &mut BackupCopy, offset: u64, b: &Bounds) -> Result<(u64, Bytes), WireError> {
    let total = copy.data.len() as u64;
    if offset > total || (offset == total && total != 0) {
        return Err(WireError::InvalidArgument {
            reason: format!("offset {offset} is past the end of the backup copy ({total} bytes)"),
        });
    }
    let start = offset as usize;
    let end = (start + b.chunk_max.max(1)).min(copy.data.len());
    // The last chunk: keep the copy only briefly (another reader of it refreshes this).
    copy.expires = b.now
        + if end == copy.data.len() {
            GRACE_TICKS.min(b.ttl_ticks)
        } else {
            b.ttl_ticks
        };
    Ok((total, copy.data.slice(start..end)))
}

/// Drops the copies unused past their expiry tick; `held` as in [`serve`]. Returns how many.
pub fn expire_copies(copies: &mut Vec<BackupCopy>, now: u64, held: &mut u64) -> usize {
    let before = copies.len();
    copies.retain(|c| {
        let keep = c.expires > now;
        if !keep {
            *held -= c.data.len() as u64;
        }
        keep
    });
    before - copies.len()
}

/// Answers `Op::Backup { index, offset, .. }` from `part`: with `index` 0 (served as a
/// linearizable read, so `part` has applied up to the read index) a new copy is taken.
/// `held`: bytes of copies the shard holds, kept up to date here and by [`expire`].
pub fn serve<C>(
    part: &mut Partition<C>,
    id: u64,
    index: u64,
    offset: u64,
    b: &Bounds,
    held: &mut u64,
) -> Response {
    let header: ResponseHeader = part.header();
    let at = if index == 0 {
        if offset != 0 {
            return error_response(
                id,
                WireError::InvalidArgument {
                    reason: "a backup starts at offset 0".into(),
                },
            );
        }
        let applied = part.sm.applied_index();
        match admit(
            &part.backups,
            applied,
            part.sm.data_bytes() + part.sm.history_bytes(),
            *held,
            b,
        ) {
            Admit::Reuse(i) => i,
            Admit::Busy(why) => {
                tracing::info!(partition = part.id, why, "backup copy refused: Busy");
                return error_response(id, WireError::Busy);
            }
            Admit::Refuse(reason) => {
                tracing::warn!(partition = part.id, reason = %reason, "backup copy refused");
                return error_response(id, WireError::InvalidArgument { reason });
            }
            Admit::Take => {
                let data = snapshot::encode(&part.sm, &convert::encode_conf(part.raft.conf()));
                let bytes = data.len();
                let copy = BackupCopy {
                    index: applied,
                    term: part.sm.applied_term(),
                    revision: part.sm.revision(),
                    data,
                    expires: b.now + b.ttl_ticks,
                    taken: b.now,
                };
                let i = insert(&mut part.backups, copy, held);
                tracing::info!(
                    partition = part.id,
                    index = applied,
                    bytes,
                    "backup copy taken"
                );
                i
            }
        }
    } else {
        match part.backups.iter().position(|c| c.index == index) {
            Some(i) => i,
            None if part.raft.role() != Role::Leader => {
                return error_response(id, not_leader(part.raft.leader(), None));
            }
            None => {
                return error_response(
                    id,
                    WireError::InvalidArgument {
                        reason: format!(
                            "{} partition {} holds no backup copy at index {index} here \
                             (dropped after its last chunk, unused for \
                             tuning.backup_copy_ttl_ms, for a newer copy, or by a restart); \
                             take a new one",
                            wire::client::BACKUP_COPY_GONE,
                            part.id
                        ),
                    },
                );
            }
        }
    };
    let copy = &mut part.backups[at];
    let (total_bytes, data) = match chunk(copy, offset, b) {
        Ok(c) => c,
        Err(e) => return error_response(id, e),
    };
    let chunk = wire::BackupChunk {
        partition: part.id,
        index: copy.index,
        term: copy.term,
        revision: copy.revision,
        total_bytes,
        offset,
        data,
    };
    ok_response(id, header, Outcome::Backup(chunk))
}

/// Drops the copies of `part` unused past their expiry tick; `held` as in [`serve`].
pub fn expire<C>(part: &mut Partition<C>, now: u64, held: &mut u64) {
    let dropped = expire_copies(&mut part.backups, now, held);
    if dropped > 0 {
        tracing::info!(partition = part.id, dropped, "backup copies dropped unused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(now: u64, bytes_max: u64) -> Bounds {
        Bounds {
            chunk_max: 4,
            now,
            ttl_ticks: 6000,
            bytes_max,
        }
    }

    fn copy(index: u64, bytes: usize, taken: u64, b: &Bounds) -> BackupCopy {
        BackupCopy {
            index,
            term: 1,
            revision: index,
            data: Bytes::from(vec![index as u8; bytes]),
            expires: taken + b.ttl_ticks,
            taken,
        }
    }

    #[test]
    fn a_new_copy_is_busy_within_the_interval_and_past_the_byte_limit() {
        let b = bounds(1000, 100);
        let mut copies = Vec::new();
        let mut held = 0;
        assert_eq!(admit(&copies, 5, 40, held, &b), Admit::Take);
        insert(&mut copies, copy(5, 40, b.now, &b), &mut held);
        // Same applied index: the copy is served again, whenever.
        assert_eq!(admit(&copies, 5, 40, held, &b), Admit::Reuse(0));
        // Newer writes, but less than a second later.
        let soon = bounds(1000 + NEW_COPY_INTERVAL_TICKS - 1, 100);
        assert!(
            matches!(admit(&copies, 6, 40, held, &soon), Admit::Busy(w) if w.contains("second"))
        );
        // A second later, but the shard's copies (other partitions' too) would pass the limit.
        let later = bounds(1000 + NEW_COPY_INTERVAL_TICKS, 100);
        assert_eq!(admit(&copies, 6, 40, held, &later), Admit::Take);
        assert!(
            matches!(admit(&copies, 6, 40, held + 30, &later), Admit::Busy(w) if w.contains("bytes_max"))
        );
        assert_eq!(
            admit(&copies, 6, 60, held, &later),
            Admit::Take,
            "100 bytes: at the limit"
        );
        assert!(matches!(
            admit(&copies, 6, 61, held, &later),
            Admit::Busy(_)
        ));
    }

    #[test]
    fn a_partition_larger_than_the_byte_limit_is_refused_with_a_reason_not_busy() {
        let b = bounds(1000, 100);
        // Busy would send the client into backoff until it times out: it could never fit.
        match admit(&[], 5, 101, 0, &b) {
            Admit::Refuse(reason) => assert!(
                reason.contains("101 bytes") && reason.contains("backup_copy_bytes_max (100)"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(admit(&[], 5, 100, 0, &b), Admit::Take);
    }

    #[test]
    fn the_copy_unused_longest_is_evicted_and_held_bytes_balance() {
        let b = bounds(0, 1000);
        let mut copies = Vec::new();
        let mut held = 0;
        insert(&mut copies, copy(1, 10, 0, &b), &mut held);
        insert(&mut copies, copy(2, 20, 100, &b), &mut held);
        assert_eq!(held, 30);
        // Copy 1 is read later than copy 2: copy 2 is now the one unused longest.
        chunk(&mut copies[0], 0, &bounds(500, 1000)).unwrap();
        // A full partition's eviction frees room: 30 held + 35 new - 20 evicted.
        assert_eq!(admit(&copies, 3, 35, held, &bounds(600, 45)), Admit::Take);
        insert(&mut copies, copy(3, 35, 600, &b), &mut held);
        let indexes: Vec<u64> = copies.iter().map(|c| c.index).collect();
        assert_eq!(indexes, vec![1, 3]);
        assert_eq!(held, 45);
        assert_eq!(expire_copies(&mut copies, u64::MAX, &mut held), 2);
        assert_eq!(held, 0, "every byte added is taken off again");
    }

    #[test]
    fn a_copy_is_kept_for_the_ttl_between_chunks_and_a_grace_after_the_last() {
        let b = bounds(0, 1000);
        let mut copies = vec![copy(7, 10, 0, &b)];
        let mut held = 10;
        // Chunks of 4 bytes: 0..4, 4..8 keep it for the TTL; 8..10 is the last.
        let (total, data) = chunk(&mut copies[0], 0, &bounds(10, 1000)).unwrap();
        assert_eq!((total, data.len()), (10, 4));
        assert_eq!(copies[0].expires, 10 + b.ttl_ticks);
        chunk(&mut copies[0], 4, &bounds(20, 1000)).unwrap();
        assert_eq!(copies[0].expires, 20 + b.ttl_ticks);
        let (_, last) = chunk(&mut copies[0], 8, &bounds(30, 1000)).unwrap();
        assert_eq!(last.len(), 2);
        assert_eq!(copies[0].expires, 30 + GRACE_TICKS);
        // Another reader within the grace keeps it (re-reading the last chunk renews it).
        assert_eq!(
            expire_copies(&mut copies, 30 + GRACE_TICKS - 1, &mut held),
            0
        );
        chunk(&mut copies[0], 8, &bounds(30 + GRACE_TICKS - 1, 1000)).unwrap();
        assert_eq!(expire_copies(&mut copies, 30 + GRACE_TICKS, &mut held), 0);
        assert_eq!(
            expire_copies(&mut copies, 30 + 2 * GRACE_TICKS - 1, &mut held),
            1
        );
        assert_eq!(held, 0);
        // An offset past the end is refused; an unused copy goes after its TTL.
        let mut c = copy(8, 10, 0, &b);
        assert!(matches!(
            chunk(&mut c, 10, &b),
            Err(WireError::InvalidArgument { .. })
        ));
        let mut copies = vec![c];
        let mut held = 10;
        assert_eq!(expire_copies(&mut copies, b.ttl_ticks - 1, &mut held), 0);
        assert_eq!(expire_copies(&mut copies, b.ttl_ticks, &mut held), 1);
    }
}
