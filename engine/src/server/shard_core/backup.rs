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
//!   before it is encoded: a new copy past it is answered `Busy` (the client backs off);
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
    let (chunk_max, now, ttl_ticks) = (b.chunk_max, b.now, b.ttl_ticks);
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
        match part.backups.iter().position(|c| c.index == applied) {
            Some(i) => i,
            None => {
                let busy = if part
                    .backups
                    .iter()
                    .any(|c| now < c.taken + NEW_COPY_INTERVAL_TICKS)
                {
                    Some("a copy of this partition was taken less than a second ago")
                } else if *held + part.sm.data_bytes() + part.sm.history_bytes() > b.bytes_max {
                    Some("the shard holds tuning.backup_copy_bytes_max of backup copies")
                } else {
                    None
                };
                if let Some(why) = busy {
                    tracing::info!(partition = part.id, why, "backup copy refused: Busy");
                    return error_response(id, WireError::Busy);
                }
                let data = snapshot::encode(&part.sm, &convert::encode_conf(part.raft.conf()));
                if part.backups.len() >= COPIES_PER_PARTITION_MAX {
                    // The copy unused longest goes first.
                    let lru = (0..part.backups.len())
                        .min_by_key(|&i| part.backups[i].expires)
                        .expect("at least one copy");
                    *held -= part.backups.remove(lru).data.len() as u64;
                }
                *held += data.len() as u64;
                part.backups.push(BackupCopy {
                    index: applied,
                    term: part.sm.applied_term(),
                    revision: part.sm.revision(),
                    data,
                    expires: now + ttl_ticks,
                    taken: now,
                });
                tracing::info!(
                    partition = part.id,
                    index = applied,
                    bytes = part.backups.last().map_or(0, |c| c.data.len()),
                    "backup copy taken"
                );
                part.backups.len() - 1
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
    let total = copy.data.len() as u64;
    if offset > total || (offset == total && total != 0) {
        return error_response(
            id,
            WireError::InvalidArgument {
                reason: format!(
                    "offset {offset} is past the end of the backup copy ({total} bytes)"
                ),
            },
        );
    }
    let start = offset as usize;
    let end = (start + chunk_max.max(1)).min(copy.data.len());
    let chunk = wire::BackupChunk {
        partition: part.id,
        index: copy.index,
        term: copy.term,
        revision: copy.revision,
        total_bytes: total,
        offset,
        data: copy.data.slice(start..end),
    };
    // The last chunk: keep the copy only briefly (another reader of it refreshes this).
    copy.expires = now
        + if end == copy.data.len() {
            GRACE_TICKS.min(ttl_ticks)
        } else {
            ttl_ticks
        };
    ok_response(id, header, Outcome::Backup(chunk))
}

/// Drops the copies of `part` unused past their expiry tick; `held` as in [`serve`].
pub fn expire<C>(part: &mut Partition<C>, now: u64, held: &mut u64) {
    let before = part.backups.len();
    part.backups.retain(|c| {
        let keep = c.expires > now;
        if !keep {
            *held -= c.data.len() as u64;
        }
        keep
    });
    if part.backups.len() < before {
        tracing::info!(
            partition = part.id,
            dropped = before - part.backups.len(),
            "backup copies dropped unused"
        );
    }
}
