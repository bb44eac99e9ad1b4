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
//! - at most [`COPIES_PER_PARTITION_MAX`] copies per partition (the oldest is dropped first);
//! - a copy is dropped once its last chunk has been served, or when no chunk of it was asked
//!   for within `tuning.backup_copy_ttl_ms`.
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
}

/// Answers `Op::Backup { index, offset, .. }` from `part`: with `index` 0 (served as a
/// linearizable read, so `part` has applied up to the read index) a new copy is taken.
/// `chunk_max` bounds a chunk so the answer fits a frame.
pub fn serve<C>(
    part: &mut Partition<C>,
    id: u64,
    index: u64,
    offset: u64,
    chunk_max: usize,
    now: u64,
    ttl_ticks: u64,
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
        match part.backups.iter().position(|c| c.index == applied) {
            Some(i) => i,
            None => {
                let data = snapshot::encode(&part.sm, &convert::encode_conf(part.raft.conf()));
                if part.backups.len() >= COPIES_PER_PARTITION_MAX {
                    part.backups.remove(0);
                }
                part.backups.push(BackupCopy {
                    index: applied,
                    term: part.sm.applied_term(),
                    revision: part.sm.revision(),
                    data,
                    expires: now + ttl_ticks,
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
                            "partition {} holds no backup copy at index {index} here (dropped \
                             after its last chunk, unused for tuning.backup_copy_ttl_ms, for a \
                             newer copy, or by a restart); take a new one",
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
    copy.expires = now + ttl_ticks;
    if end == copy.data.len() {
        part.backups.remove(at);
    }
    ok_response(id, header, Outcome::Backup(chunk))
}

/// Drops the copies of `part` unused past their expiry tick.
pub fn expire<C>(part: &mut Partition<C>, now: u64) {
    let before = part.backups.len();
    part.backups.retain(|c| c.expires > now);
    if part.backups.len() < before {
        tracing::info!(
            partition = part.id,
            dropped = before - part.backups.len(),
            "backup copies dropped unused"
        );
    }
}
