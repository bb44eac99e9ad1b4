//! The per-shard, multiplexed Raft log in O_DIRECT segment files.
//!
//! One [`Wal`] per shard holds the logs of all the shard's partitions (Raft groups), interleaved
//! in one stream of segment files, so that one write and one `fdatasync` make a whole event-loop
//! turn's worth of appends durable (group commit). [`MemLog`] is an in-memory implementation
//! with the same semantics plus fault injection, for the simulator. Both implement [`LogStore`].
//!
//! # Usage pattern (the engine)
//! Each event-loop turn the shard calls [`LogStore::append`], [`LogStore::put_hard_state`],
//! [`LogStore::truncate`] and [`LogStore::compact`] for its partitions' Raft `Ready`s. These only
//! buffer (no I/O, cheap; they update the in-memory index at once, so reads see them). Then it
//! awaits [`LogStore::sync`], which writes the whole batch with ONE write and ONE `fdatasync`, and
//! returns a [`DurableReport`] naming the (partition, index range)s and hard states that are now
//! durable, in order. Only then may the engine send the responses that depend on them (vote
//! grants, append acknowledgements: Raft thesis §3.8, "persisted before responding").
//!
//! Methods take `&self` (interior mutability; the WAL lives on one shard's executor and its
//! futures are not `Send`), so while one `sync` is in flight other tasks keep appending into the
//! next batch: assembly is pipelined, the device write is not. At most one write+fdatasync is in
//! flight; a second `sync` waits for the first. Why not overlap writes: `fdatasync` flushes every
//! earlier write of the file anyway, so overlapping saves little device work, and keeping one
//! batch in flight means only the last batch can ever be torn, which is what lets recovery tell a
//! torn tail from corruption (below).
//!
//! ```no_run
//! use bytes::Bytes;
//! use wal::{Entry, HardState, LogStore, Wal, WalConfig};
//!
//! // At process start, before the executors: room for glommio's DMA buffers (see below).
//! let _ = wal::raise_memlock_limit(64 << 20);
//! glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0))
//!     .spawn(|| async move {
//!         let log = Wal::open("/var/lib/corum/shard-0/wal", WalConfig::default()).await?;
//!         // One event-loop turn: buffer every partition's Ready...
//!         let e = Entry { index: log.last_index(7) + 1, term: 3, kind: 0, data: Bytes::from_static(b"x") };
//!         log.append(7, &[e])?;
//!         log.put_hard_state(7, HardState { term: 3, vote: 2, commit: 0 })?;
//!         // ...then one write + one fdatasync for all of them.
//!         match log.sync().await {
//!             Ok(report) => { /* report.appended / report.hard_states are durable: respond */ }
//!             Err(e) if e.is_fatal() => std::process::abort(), // fsync failed: never retry
//!             Err(e) => return Err(e), // drop the log, reopen it
//!         }
//!         Ok::<_, wal::WalError>(())
//!     })
//!     .unwrap()
//!     .join()
//!     .unwrap()
//!     .unwrap();
//! ```
//!
//! # Errors and what the caller must do
//! * [`WalError::SyncFailed`]: `fdatasync` failed. **Fatal for the process**: the kernel may have
//!   dropped the dirty state and a retried `fdatasync` can report success without the data being
//!   on disk (the "fsyncgate" problem; raft-engine and PostgreSQL also treat it as fatal). Stop the
//!   process; on restart, recovery reads what actually reached the disk. [`WalError::is_fatal`].
//! * [`WalError::Io`] during `sync` (e.g. ENOSPC/EFBIG when creating a segment, EIO on write):
//!   nothing acknowledged earlier is damaged; the WAL refuses further writes
//!   ([`WalError::Poisoned`]); drop it and [`Wal::open`] it again (in-process is fine).
//! * [`WalError::Corrupt`] at open: a record before the tail failed its checksum; the message
//!   names the file and byte offset. Nothing is skipped silently; the node must not start.
//! * Caller mistakes (non-contiguous append, truncating compacted entries, batch over its
//!   limit) return an error and leave the state unchanged.
//!
//! # glommio, locked memory and two glommio pitfalls
//! Checked on the development machine (kernel 6.18, glommio 0.9.0, RLIMIT_MEMLOCK 8 MiB soft and
//! hard, running as root in a container with `CAP_IPC_LOCK` but without `CAP_SYS_RESOURCE`):
//! * glommio allocates `io_memory` (default 10 MiB) of DMA buffers per executor and registers it
//!   with each of its three io_uring rings (`IORING_REGISTER_BUFFERS`, seen with strace). It
//!   refuses to start if RLIMIT_MEMLOCK is below 512 KiB. Registration of the 10 MiB succeeded
//!   despite the 8 MiB limit, because `CAP_IPC_LOCK` exempts the process from memlock accounting.
//!   Without `CAP_IPC_LOCK` (checked by dropping it with `setpriv --bounding-set=-ipc_lock`), a
//!   limit below `io_memory` makes `IORING_REGISTER_BUFFERS` fail with ENOMEM; glommio then logs a
//!   warning (through `log`) and carries on with unregistered buffers: still O_DIRECT, a little
//!   more work per I/O (wal-bench ran normally that way). Ring memory itself is charged to the memory cgroup (kernel >= 5.12), not to the limit.
//! * Raising the limit: [`raise_memlock_limit`] raises the soft limit, and the hard limit if the
//!   process may (`CAP_SYS_RESOURCE`; this container lacks it, so 8 MiB is the ceiling here). The
//!   engine should call it at start, then pick `LocalExecutorBuilder::io_memory` so that
//!   `io_memory` x executors fits under the limit unless it has `CAP_IPC_LOCK` (or run under
//!   systemd with `LimitMEMLOCK=`). Buffers larger than what is free in the pool silently fall back
//!   to heap-allocated aligned buffers, so a small `io_memory` costs little for the WAL.
//! * **IOPOLL probe pitfall**: glommio decides once per process and block device, at the first
//!   `DmaFile` opened on it, whether that device's I/O goes to its IOPOLL ring, by reading the first
//!   block of that file. If the file is empty, the read succeeds without reaching the device, the
//!   device is wrongly marked pollable, and all later DMA reads fail with EOPNOTSUPP on devices
//!   without poll queues (virtio-blk here). [`Wal::open`] therefore first opens a non-empty probe
//!   file ([`prime_iopoll_probe`]); the engine must call that before opening any other `DmaFile`.
//! * glommio's `Directory::open` fails with EBADF on relative paths; [`Wal::open`] canonicalizes.
//!
//! # On-disk format (version 1)
//! All integers little-endian. A WAL directory holds segment files named
//! `{segment_no:016x}.wal` (zero-padded hex, so name order is log order), numbered from 1 with no
//! gaps (a gap is reported as corruption). Segments have a fixed size (default 64 MiB),
//! preallocated with `fallocate`, so unwritten space reads as zeros and ENOSPC can only happen when
//! a segment is created, never in the middle of one.
//!
//! Segment header, at offset 0; the rest of block 0 (4096 bytes) is zero; records start at 4096:
//! ```text
//! off len field
//!   0   8 magic          b"CORUMWAL"
//!   8   4 version        1
//!  12   4 header_bytes   40
//!  16   8 segment_no     equals the number in the file name
//!  24   8 segment_bytes  configured size at creation
//!  32   4 flags          bit 0: created by Wal::open after recovery ("seals" all earlier
//!                        segments: none of them can hold a torn tail; written only when
//!                        open cannot continue the last segment, see "Recovery"); other bits 0
//!  36   4 crc32c         of bytes 0..36
//! ```
//! Records follow back to back, each starting at an 8-byte aligned offset:
//! ```text
//! off len field
//!   0   4 crc32c       over header bytes 4..48, then the payload (not the padding)
//!   4   1 kind         1 ENTRIES, 2 HARD_STATE, 3 SNAPSHOT, 4 TRUNCATE, 5 BATCH_END (0: end of data)
//!   5   1 flags        0
//!   6   2 reserved     0
//!   8   4 payload_len  bytes of payload after the header
//!  12   4 count        ENTRIES: entries in payload; BATCH_END: records in the batch before it
//!  16   8 batch_seq    same for every record of one batch; +1 per batch; never reused by a
//!                      record on disk (only a cut, zeroed batch's number can be reused)
//!  24   8 partition    partition id (0 for BATCH_END)
//!  32   8 index        ENTRIES: first index; SNAPSHOT: snapshot index; TRUNCATE: first
//!                      discarded index; BATCH_END: byte length of the batch before it
//!  40   8 term         SNAPSHOT: snapshot term; otherwise 0
//!  48   .. payload, then zero padding up to a multiple of 8 (checked to be zero)
//! ```
//! Payloads: ENTRIES: `count` x `{ term u64 | data_len u32 | kind u8 | reserved [u8;3] | data }`
//! (entry `i` has index `index + i`). HARD_STATE: `{ term u64 | vote u64 | commit u64 }`.
//! SNAPSHOT, TRUNCATE and BATCH_END have no payload.
//!
//! A batch is the records buffered between two `sync`s followed by one BATCH_END record; it is
//! written with one `pwrite` at a 4 KiB-aligned offset and made durable by one `fdatasync`. A batch
//! never spans segments (if it does not fit, the WAL moves to a new segment first; a batch is
//! limited by `batch_bytes_max`, which must fit in one segment). The partially filled last 4 KiB
//! block is kept in memory and rewritten, with identical leading bytes, by the next write, so a
//! small batch costs one 4 KiB block, not one block per sync and the disk never sees gaps; a torn
//! rewrite of that block cannot damage the durable bytes in it because they are rewritten unchanged.
//!
//! # Recovery
//! Segments are read in order and every record verified. Only complete batches (ending in a valid
//! BATCH_END whose count and length match) are applied. Scanning a segment stops at the first
//! all-zero header (end of data) or bad record (offset X). Then:
//! * The tail segment is the last one holding records, unless a later segment has the "seals"
//!   flag (then none is). Segments after the tail segment may exist without records: the next
//!   segment is created and prefilled in the background once the current one is half full.
//! * Every segment but the tail segment must end cleanly: no incomplete batch and no valid record
//!   anywhere after X. Otherwise: [`WalError::Corrupt`] naming the file and X.
//! * In the tail segment, the torn tail is the batch in progress at X (the only write that may have
//!   been in flight). The rest of the segment is searched (every 8-byte offset) for valid records:
//!   one from any other batch means X is damage inside durable data: `Corrupt`. Otherwise the tail
//!   from the start of the incomplete batch is cut off (logged with `tracing::warn!`) and zeroed on
//!   disk (below). A fresh segment with a torn header and no valid record is removed.
//!
//! ## Where writing continues: the recovered end of the last segment
//! After recovery, [`Wal::open`] continues writing in the **last** segment, at E, the end of its
//! last complete batch (the cut, if its tail was torn); it creates no segment. So a node that
//! restarts often keeps one segment, not one per start. The rule that keeps this crash safe:
//!
//! > Before the first new batch is written, every byte of the last segment from E to its end is
//! > zero on disk, durably (`fdatasync` before `open` returns).
//!
//! Recovery has the segment's bytes in memory, so it rewrites, from the block holding E, the
//! blocks up to the last nonzero byte: the bytes before E unchanged (exactly what the next
//! batch's write rewrites anyway, see "On-disk format"), zeros from E on. This covers the cut torn
//! batch and any bytes a clean scan left after E (a torn write whose first sector was lost but a
//! later one, holding no whole record, was not). Writing zeros rather than punching a hole keeps
//! the blocks written, as prefilling made them, so later syncs there stay cheap. A cut torn tail
//! in any segment is zeroed the same way. Why it matters: the next batch may be shorter than
//! what it overwrites, and its sequence number may equal the torn batch's (a torn batch whose
//! first record was lost is not counted in `max_seq_seen`); a stale record left past the new end
//! would, at the next recovery, either be taken for a record of the new batch or make the
//! recovered tail look like damage before it (`Corrupt`). With the zeros durable first, a crash
//! at any point of the next write leaves only that write's bytes past E, and the recovery above
//! cuts exactly them. Everything before E is never written again except unchanged, so an
//! acknowledged (synced) batch is never lost or altered.
//!
//! Recovery also counts as durable batches whose write completed but whose `fdatasync` never
//! ran (a process killed mid-sync: the bytes may sit in the device's volatile cache), so
//! [`Wal::open`] fdatasyncs every segment it recovered before it returns
//! (`WalStats::recovery_syncs`). Before the log continued in its last segment, creating a new
//! segment at every open flushed the device as a side effect.
//!
//! The last segment is not continued, and a new one (flag "seals") is started after it, only
//! when its file no longer has the size its header says it was created with (cut short outside
//! the WAL) or there are no segments. A segment continued after a configuration change keeps its
//! own size; new segments take the configured one. Trailing segments created ahead (`spawn_spare`)
//! that never got a record and have no "seals" flag are removed before that, so the last segment
//! is the tail segment. WALs written by earlier versions (one "seals" segment per start) read the
//! same way: their last segment is continued, the earlier ones are deleted as compaction passes
//! them ("Compaction and segment deletion").
//!
//! Recovery reads every segment whole ([`WalStats::recovery_bytes_read`]), so its cost follows
//! the live log (segments are deleted once compacted past), not the number of restarts.
//!
//! Limitation (shared by every log that checksums records): damage inside the very last batch
//! looks exactly like a torn write and is cut off as one.
//!
//! # Compaction and segment deletion
//! [`LogStore::compact`] logs a SNAPSHOT record and drops the entries at or below the index from
//! the index. After each `sync`, segments below the oldest one still needed are deleted: a
//! segment is needed while it holds a live entry, or the latest durable hard state or snapshot
//! record of some partition. A hard state or snapshot record that alone pins an old segment is
//! written again into the next batch, so it stops pinning it once that batch is durable.

#![deny(missing_docs)]

mod format;
#[doc(hidden)]
pub mod fuzzing;
mod index;
mod mem;
mod wal;

pub use format::{FORMAT_VERSION, SEGMENT_MAGIC};
pub use mem::{FaultConfig, MemLog};
pub use wal::{prime_iopoll_probe, raise_memlock_limit, Wal, WalConfig, WalStats};

use std::path::PathBuf;

use bytes::Bytes;

/// Identifies a partition (one Raft group) inside a shard.
pub type PartitionId = u64;

/// One log entry. `kind` is opaque to the WAL (the engine stores the Raft entry type there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Raft log index (>= 1).
    pub index: u64,
    /// Raft term of the entry.
    pub term: u64,
    /// Opaque kind byte.
    pub kind: u8,
    /// Opaque payload.
    pub data: Bytes,
}

/// Raft's persistent per-server state other than the log (Raft paper §5, Figure 2), plus commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// currentTerm.
    pub term: u64,
    /// votedFor (0: none).
    pub vote: u64,
    /// Commit index.
    pub commit: u64,
}

/// The point a partition was snapshotted and compacted at: entries `<= index` are gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPoint {
    /// Last index covered by the snapshot.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
}

/// A range of one partition's entries that became durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurableRange {
    /// The partition.
    pub partition: PartitionId,
    /// First durable index of this append.
    pub first: u64,
    /// Last durable index of this append.
    pub last: u64,
}

/// What one [`LogStore::sync`] made durable, in the order it was buffered.
///
/// `hard_states` and `snapshots` may also list values the [`Wal`] re-logged by itself so that an
/// old segment can be deleted (the same values as already durable; see "Compaction" above).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableReport {
    /// Sequence number of the batch (0 if the batch was empty and nothing was written).
    pub batch_seq: u64,
    /// Appended entry ranges now durable, in append order.
    pub appended: Vec<DurableRange>,
    /// Hard states now durable (the last one per partition is the current one).
    pub hard_states: Vec<(PartitionId, HardState)>,
    /// Truncations (partition, first discarded index) now durable.
    pub truncations: Vec<(PartitionId, u64)>,
    /// Snapshot points now durable.
    pub snapshots: Vec<(PartitionId, SnapshotPoint)>,
    /// Segment the batch went to ([`Wal`] only; 0 for [`MemLog`] or an empty batch).
    pub segment: u64,
    /// Byte offset just past the batch in that segment ([`Wal`] only).
    pub end_offset: u64,
    /// Bytes handed to the device for the batch, padding and a rewritten partial block
    /// included ([`Wal`] only).
    pub device_bytes: u64,
    /// How long the batch's write took ([`Wal`] only; for metrics).
    pub write_time: std::time::Duration,
    /// How long its fdatasync took ([`Wal`] only; for metrics).
    pub fdatasync_time: std::time::Duration,
}

impl DurableReport {
    /// True if nothing was made durable.
    pub fn is_empty(&self) -> bool {
        self.appended.is_empty()
            && self.hard_states.is_empty()
            && self.truncations.is_empty()
            && self.snapshots.is_empty()
    }
}

/// Errors of the log. See the crate docs for what the caller must do for each.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// `fdatasync` failed: FATAL. The process must stop; retrying can lose data silently.
    #[error("fdatasync of {path} failed: {source}; this is fatal, the process must stop (a retried fsync can lose data silently)")]
    SyncFailed {
        /// The file being synced.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An I/O operation failed (ENOSPC, EIO, ...). Durable data is intact; reopen the log.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A checksum or structure failure before the tail: the node must not start.
    #[error("corrupt WAL: {file} at byte offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        file: PathBuf,
        /// Byte offset of the bad record (or segment header) in that file.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// The directory is on a filesystem without O_DIRECT support.
    #[error("{path} is on {fs}, which does not support O_DIRECT; put the WAL on a disk filesystem (ext4, xfs)")]
    UnsupportedFilesystem {
        /// The directory.
        path: PathBuf,
        /// The filesystem type found.
        fs: &'static str,
    },
    /// An earlier write or sync failed; the log refuses further writes. Reopen it (or, after
    /// [`WalError::SyncFailed`], stop the process).
    #[error("the log refuses writes after an earlier failure ({0}); reopen it")]
    Poisoned(String),
    /// An append did not start right after the partition's last index.
    #[error("partition {partition}: append at index {got}, expected {expected}")]
    NonContiguous {
        /// The partition.
        partition: PartitionId,
        /// The index the next append must start at.
        expected: u64,
        /// The index it started at.
        got: u64,
    },
    /// The index is at or below the partition's snapshot point.
    #[error("partition {partition}: index {index} is compacted (first index {first_index})")]
    Compacted {
        /// The partition.
        partition: PartitionId,
        /// The index asked for.
        index: u64,
        /// The first index still held.
        first_index: u64,
    },
    /// The index is past the partition's last index.
    #[error("partition {partition}: index {index} is past the last index {last_index}")]
    Unavailable {
        /// The partition.
        partition: PartitionId,
        /// The index asked for.
        index: u64,
        /// The last index held.
        last_index: u64,
    },
    /// Buffering this would exceed `batch_bytes_max`; call `sync` first.
    #[error("batch would reach {bytes} bytes, over batch_bytes_max {bytes_max}; sync first")]
    BatchFull {
        /// Bytes the batch would have.
        bytes: u64,
        /// The limit.
        bytes_max: u64,
    },
    /// An argument is invalid (empty or non-contiguous entry slice, index 0, bad config).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl WalError {
    /// True for errors after which the process must stop ([`WalError::SyncFailed`]).
    pub fn is_fatal(&self) -> bool {
        matches!(self, WalError::SyncFailed { .. })
    }
}

/// The log interface the engine and the simulator use. Implemented by [`Wal`] (real files) and
/// [`MemLog`] (memory, fault injection). Both have the same semantics:
/// * `append`/`put_hard_state`/`truncate`/`compact` buffer and update the in-memory view at once
///   (reads see them); nothing is durable until a later [`LogStore::sync`] returns `Ok`.
/// * After a crash, exactly the state as of some `sync` survives: every successful `sync`, plus
///   possibly the one batch whose write was issued but whose `sync` did not return `Ok`. Never part
///   of a batch.
///
/// The futures are not `Send`: the log belongs to one shard's executor.
#[allow(async_fn_in_trait)]
pub trait LogStore {
    /// Buffers `entries` (contiguous indexes, starting right after the partition's last index).
    fn append(&self, partition: PartitionId, entries: &[Entry]) -> Result<(), WalError>;
    /// Buffers a new hard state for `partition`.
    fn put_hard_state(&self, partition: PartitionId, hard_state: HardState)
        -> Result<(), WalError>;
    /// Buffers the discarding of `partition`'s entries `>= from` (a conflicting suffix, Raft paper
    /// §5.3). `from` must be above the snapshot point and at most `last_index + 1`.
    fn truncate(&self, partition: PartitionId, from: u64) -> Result<(), WalError>;
    /// Buffers the compaction of `partition` at `point`: entries `<= point.index` are dropped
    /// (Raft paper §7). Entries after it are kept; if the log ended before it, the next append
    /// starts at `point.index + 1`.
    fn compact(&self, partition: PartitionId, point: SnapshotPoint) -> Result<(), WalError>;
    /// Makes everything buffered so far durable (one write + one fdatasync for [`Wal`]).
    async fn sync(&self) -> Result<DurableReport, WalError>;
    /// Entries `lo..hi` of `partition`, stopping early once `bytes_max` of data is collected
    /// (always at least one entry if `lo < hi`).
    async fn entries(
        &self,
        partition: PartitionId,
        lo: u64,
        hi: u64,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, WalError>;
    /// The partition's latest hard state (buffered or durable).
    fn hard_state(&self, partition: PartitionId) -> Option<HardState>;
    /// The partition's snapshot point, if compacted.
    fn snapshot_point(&self, partition: PartitionId) -> Option<SnapshotPoint>;
    /// First index held (`last_index + 1` when empty).
    fn first_index(&self, partition: PartitionId) -> u64;
    /// Last index held (or the snapshot index, or 0).
    fn last_index(&self, partition: PartitionId) -> u64;
    /// Term of `index`: an entry held or the snapshot point.
    fn term(&self, partition: PartitionId, index: u64) -> Option<u64>;
    /// All partitions the log knows, ascending.
    fn partitions(&self) -> Vec<PartitionId>;
    /// Bytes buffered for the next [`LogStore::sync`] (a caller bounds its pipeline with it;
    /// buffering past the batch limit returns [`WalError::BatchFull`]).
    fn buffered_bytes(&self) -> u64;
}

/// Validates an entry slice for `append`: non-empty, index >= 1, contiguous.
pub(crate) fn check_entries(partition: PartitionId, entries: &[Entry]) -> Result<(), WalError> {
    let Some(first) = entries.first() else {
        return Err(WalError::Invalid(format!(
            "partition {partition}: empty append"
        )));
    };
    if first.index == 0 {
        return Err(WalError::Invalid(format!("partition {partition}: index 0")));
    }
    for (i, e) in entries.iter().enumerate() {
        if e.index != first.index + i as u64 {
            return Err(WalError::Invalid(format!(
                "partition {partition}: entries not contiguous at {}",
                e.index
            )));
        }
        if e.data.len() > u32::MAX as usize / 2 {
            return Err(WalError::Invalid(format!(
                "partition {partition}: entry {} too large",
                e.index
            )));
        }
    }
    Ok(())
}
