//! Rebuilding a partition after a restart from what was durable: the newest snapshot file, the
//! WAL's hard state and entries after the snapshot (Raft paper §5 Figure 2 "persistent state",
//! §7 snapshots). Committed entries after the snapshot are replayed through the normal apply
//! path: raftcore hands them out again as `committed_entries` (up to the durable commit index),
//! so there is one apply path, not two.
//!
//! A brand-new partition (no snapshot file, nothing in the WAL) is bootstrapped: every founding
//! replica starts from the same snapshot at index 1, term 1 holding the initial voters and an
//! empty state machine ([`raftcore::RestartState::bootstrap`]), and the WAL is told the log
//! starts after it.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use raftcore::{ConfState, HardState, RestartState, Snapshot, SnapshotMeta};
use wal::{LogStore, SnapshotPoint};

use super::convert;
use super::shard_core::SnapshotStore;
use super::ServerError;
use crate::snapshot;
use crate::state_machine::{Config as SmConfig, StateMachine};

/// Bytes of entries read from the WAL per call during recovery.
const RECOVERY_READ_BYTES: u64 = 8 << 20;

/// The newest snapshot file of `partition` in `dir`: (path, index, term).
pub fn newest_snapshot_file(dir: &Path, partition: u64) -> Option<(PathBuf, u64, u64)> {
    let rd = std::fs::read_dir(dir).ok()?;
    let mut best: Option<(PathBuf, u64, u64)> = None;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((p, index, term)) = snapshot::parse_file_name(name) {
            if p == partition && best.as_ref().is_none_or(|b| index > b.1) {
                best = Some((e.path(), index, term));
            }
        }
    }
    best
}

/// Deletes snapshot files of `partition` older than `keep_index`.
pub fn remove_older_snapshots(dir: &Path, partition: u64, keep_index: u64) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((p, index, _)) = snapshot::parse_file_name(name) {
            if p == partition && index < keep_index {
                if let Err(err) = std::fs::remove_file(e.path()) {
                    tracing::warn!(file = %e.path().display(), error = %err, "could not remove old snapshot");
                }
            }
        }
    }
}

/// The state machine settings of `partition`; they must be equal on every replica, since
/// session eviction depends on them.
pub fn sm_config(partition: u64, tuning: &crate::config::Tuning) -> SmConfig {
    SmConfig {
        partition_id: partition,
        sessions_max: tuning.sessions_max,
        session_results_max: tuning.session_results_max,
        history_revisions: tuning.history_revisions,
        history_bytes_max: tuning.history_bytes_max,
    }
}

/// Snapshot files in a directory: `data_dir/shard-<i>/snapshots/` (the real node's
/// [`SnapshotStore`]).
pub struct FileSnapshots {
    /// The directory.
    pub dir: PathBuf,
}

impl SnapshotStore for FileSnapshots {
    fn newest(&self, partition: u64) -> Result<Option<(u64, u64, Bytes)>, String> {
        match newest_snapshot_file(&self.dir, partition) {
            Some((path, index, term)) => std::fs::read(&path)
                .map(|b| Some((index, term, Bytes::from(b))))
                .map_err(|e| format!("read {}: {e}", path.display())),
            None => Ok(None),
        }
    }

    fn remove_older(&self, partition: u64, keep_index: u64) {
        remove_older_snapshots(&self.dir, partition, keep_index)
    }
}

/// Recovers (or bootstraps) one partition. Returns the Raft restart state and the state machine
/// as of the snapshot.
pub async fn recover_partition<L: LogStore, S: SnapshotStore>(
    shard: usize,
    wal: &L,
    snaps: &S,
    partition: u64,
    voters: &[u64],
    tuning: &crate::config::Tuning,
) -> Result<(RestartState, StateMachine), ServerError> {
    let err = |reason: String| ServerError::Recovery {
        shard,
        partition,
        reason,
    };
    let sm_config = sm_config(partition, tuning);
    let (snap, sm) = match snaps.newest(partition).map_err(&err)? {
        Some((index, term, bytes)) => {
            let name = snapshot::file_name(partition, index, term);
            let decoded = snapshot::decode(&bytes, &sm_config)
                .map_err(|e| err(format!("snapshot file {name}: {e}")))?;
            if decoded.meta.applied_index != index
                || decoded.meta.applied_term != term
                || decoded.meta.partition_id != partition
            {
                return Err(err(format!("snapshot file {name} does not match its name")));
            }
            let conf = convert::decode_conf(&decoded.meta.membership)
                .ok_or_else(|| err(format!("bad membership in {name}")))?;
            tracing::info!(shard, partition, index, term, "recovered snapshot");
            (
                Snapshot {
                    meta: SnapshotMeta { index, term, conf },
                    data: bytes,
                },
                decoded.state,
            )
        }
        None => {
            let mut sm = StateMachine::new(sm_config);
            sm.advance_applied(1, 1)
                .map_err(|e| err(format!("bootstrap: {e}")))?;
            let conf = ConfState::with_voters(voters);
            let data = snapshot::encode(&sm, &convert::encode_conf(&conf));
            let boot = RestartState::bootstrap(conf, data);
            (boot.snapshot, sm)
        }
    };
    let snap_index = snap.meta.index;
    // The WAL must know that the log starts after the snapshot (written again if a crash came
    // between writing a snapshot file and the WAL's compaction record).
    let wal_point = wal.snapshot_point(partition).map_or(0, |p| p.index);
    if wal_point < snap_index {
        if wal.last_index(partition) > snap_index
            && wal.term(partition, snap_index) != Some(snap.meta.term)
        {
            // Entries after a snapshot that do not continue it cannot be trusted.
            wal.truncate(partition, wal.first_index(partition).max(wal_point + 1))
                .map_err(|e| err(format!("WAL truncate: {e}")))?;
        }
        wal.compact(
            partition,
            SnapshotPoint {
                index: snap_index,
                term: snap.meta.term,
            },
        )
        .map_err(|e| err(format!("WAL compact: {e}")))?;
    } else if wal_point > snap_index {
        return Err(err(format!(
            "WAL is compacted to {wal_point} but the newest snapshot file is at {snap_index}"
        )));
    }
    let mut entries = Vec::new();
    let last = wal.last_index(partition);
    let mut lo = snap_index + 1;
    while lo <= last {
        let got = wal
            .entries(partition, lo, last + 1, RECOVERY_READ_BYTES)
            .await
            .map_err(|e| err(format!("WAL read {lo}..={last}: {e}")))?;
        if got.is_empty() {
            return Err(err(format!("WAL returned no entries at {lo}")));
        }
        for e in got {
            lo = e.index + 1;
            entries.push(convert::from_wal(e).map_err(|e| err(format!("WAL entry: {e}")))?);
        }
    }
    let mut hard_state = wal
        .hard_state(partition)
        .map(|h| HardState {
            term: h.term,
            vote: h.vote,
            commit: h.commit,
        })
        .unwrap_or(HardState {
            term: 1,
            vote: 0,
            commit: 1,
        });
    let last_index = entries.last().map_or(snap_index, |e| e.index);
    hard_state.commit = hard_state.commit.clamp(snap_index, last_index);
    // The durable term is at least the term of any durable entry or snapshot (a snapshot file
    // is made durable before the WAL batch holding the hard state that came with it). When it
    // has to be raised, the vote recorded was cast in an older term: it says nothing about the
    // new one, so it is cleared (keeping it would record a vote in a term this node never
    // voted in; finding 8 of issue 10). Clearing is safe: a vote this node granted in the
    // higher term was sent only after its hard state was durable (thesis §3.8), and that hard
    // state would carry the higher term, so no granted vote is forgotten.
    let log_term = entries.last().map_or(0, |e| e.term).max(snap.meta.term);
    if log_term > hard_state.term {
        tracing::info!(
            shard,
            partition,
            from = hard_state.term,
            to = log_term,
            "recovery raised the term to the log's; vote cleared"
        );
        hard_state.term = log_term;
        hard_state.vote = 0;
    }
    tracing::info!(
        shard,
        partition,
        snapshot = snap_index,
        entries = entries.len(),
        term = hard_state.term,
        commit = hard_state.commit,
        "partition recovered"
    );
    Ok((
        RestartState {
            hard_state,
            snapshot: snap,
            entries,
        },
        sm,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use wal::MemLog;

    /// Snapshot files in memory.
    #[derive(Default)]
    struct MemSnaps(RefCell<BTreeMap<u64, (u64, u64, Bytes)>>);

    impl SnapshotStore for MemSnaps {
        fn newest(&self, partition: u64) -> Result<Option<(u64, u64, Bytes)>, String> {
            Ok(self.0.borrow().get(&partition).cloned())
        }
        fn remove_older(&self, _: u64, _: u64) {}
    }

    /// Finding 8 of issue 10: a recovered hard state older than the log's last term keeps a
    /// vote cast in an older term. The term is raised to the log's and the vote cleared.
    #[test]
    fn raising_the_term_clears_the_vote() {
        let log = MemLog::default();
        let snaps = MemSnaps::default();
        let tuning = crate::config::Tuning::default();
        // Bootstrap (snapshot at 1), then entries of term 5 with a hard state of term 3 that
        // voted for node 2.
        let (boot, _) = futures_lite::future::block_on(recover_partition(
            0,
            &log,
            &snaps,
            7,
            &[1, 2, 3],
            &tuning,
        ))
        .unwrap();
        assert_eq!(boot.hard_state.term, 1);
        let entries: Vec<wal::Entry> = (2..=4)
            .map(|index| wal::Entry {
                index,
                term: 5,
                kind: raftcore::EntryKind::Normal as u8,
                data: Bytes::new(),
            })
            .collect();
        log.append(7, &entries).unwrap();
        log.put_hard_state(
            7,
            wal::HardState {
                term: 3,
                vote: 2,
                commit: 1,
            },
        )
        .unwrap();
        futures_lite::future::block_on(log.sync()).unwrap();
        let (state, _) = futures_lite::future::block_on(recover_partition(
            0,
            &log,
            &snaps,
            7,
            &[1, 2, 3],
            &tuning,
        ))
        .unwrap();
        assert_eq!(state.hard_state.term, 5);
        assert_eq!(
            state.hard_state.vote, 0,
            "a vote of term 3 must not count in term 5"
        );
        // A hard state as new as the log keeps its vote.
        log.put_hard_state(
            7,
            wal::HardState {
                term: 5,
                vote: 3,
                commit: 1,
            },
        )
        .unwrap();
        futures_lite::future::block_on(log.sync()).unwrap();
        let (state, _) = futures_lite::future::block_on(recover_partition(
            0,
            &log,
            &snaps,
            7,
            &[1, 2, 3],
            &tuning,
        ))
        .unwrap();
        assert_eq!((state.hard_state.term, state.hard_state.vote), (5, 3));
    }
}
