//! Property tests: random appends, truncations, compactions, hard states, syncs and crashes /
//! reopens over several partitions, against the reference model, for both `Wal` and `MemLog`.

mod common;

use common::{compare, entry, run, test_dir, Model};
use proptest::prelude::*;
use wal::{FaultConfig, HardState, LogStore, MemLog, SnapshotPoint, Wal, WalConfig, WalError};

const PARTS: u64 = 4;

#[derive(Clone, Debug)]
enum Op {
    Append { p: u64, n: u8, len: u16, bump: bool },
    Truncate { p: u64, back: u8 },
    Compact { p: u64, back: u8 },
    Hard { p: u64, vote: u8 },
    Sync,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..PARTS, 1u8..8, 0u16..2500, any::<bool>()).prop_map(|(p, n, len, bump)| Op::Append { p, n, len, bump }),
        2 => (0..PARTS, 0u8..4).prop_map(|(p, back)| Op::Truncate { p, back }),
        3 => (0..PARTS, 0u8..8).prop_map(|(p, back)| Op::Compact { p, back }),
        2 => (0..PARTS, any::<u8>()).prop_map(|(p, vote)| Op::Hard { p, vote }),
        4 => Just(Op::Sync),
        1 => Just(Op::Reopen),
    ]
}

/// Applies one non-reopen op to the log and the model. Invalid ops must fail on both sides.
async fn step<L: LogStore>(log: &L, m: &mut Model, op: &Op, salt: u64) -> Result<(), String> {
    loop {
        let r = try_step(log, m, op, salt).await;
        match r {
            Err(WalError::BatchFull { .. }) => {
                log.sync().await.map_err(|e| e.to_string())?;
                m.sync();
            }
            Err(e) => return Err(e.to_string()),
            Ok(()) => return Ok(()),
        }
    }
}

async fn try_step<L: LogStore>(log: &L, m: &mut Model, op: &Op, salt: u64) -> Result<(), WalError> {
    match *op {
        Op::Append { p, n, len, bump } => {
            let mp = m.part(p);
            let last = mp.last();
            let term = mp
                .entries
                .values()
                .next_back()
                .map_or(mp.snap.map_or(1, |s| s.term), |e| e.term)
                + u64::from(bump);
            let es: Vec<_> = (0..u64::from(n))
                .map(|i| entry(last + 1 + i, term, len as usize + i as usize, salt))
                .collect();
            log.append(p, &es)?;
            for e in es {
                mp.entries.insert(e.index, e);
            }
        }
        Op::Truncate { p, back } => {
            let mp = m.part(p);
            let from = (mp.last() + 1).saturating_sub(u64::from(back));
            let r = log.truncate(p, from);
            if from <= mp.floor() || from == 0 {
                assert!(
                    matches!(r, Err(WalError::Compacted { .. })),
                    "truncate below floor must fail: {r:?}"
                );
                return Ok(());
            }
            r?;
            mp.entries.retain(|&i, _| i < from);
        }
        Op::Compact { p, back } => {
            let mp = m.part(p);
            let index = mp.last().saturating_sub(u64::from(back)).max(mp.floor());
            let term = mp
                .entries
                .get(&index)
                .map_or(mp.snap.map_or(0, |s| s.term), |e| e.term);
            let point = SnapshotPoint { index, term };
            log.compact(p, point)?;
            mp.entries.retain(|&i, _| i > index);
            mp.snap = Some(point);
        }
        Op::Hard { p, vote } => {
            let mp = m.part(p);
            let hs = HardState {
                term: mp.hs.map_or(1, |h| h.term + 1),
                vote: u64::from(vote),
                commit: mp.last(),
            };
            log.put_hard_state(p, hs)?;
            mp.hs = Some(hs);
        }
        Op::Sync => {
            let rep = log.sync().await?;
            // Every appended range reported durable is in the model's log now or was since
            // truncated/compacted; the report is in order of the batch.
            let _ = rep;
            m.sync();
        }
        Op::Reopen => unreachable!(),
    }
    Ok(())
}

fn wal_cfg() -> WalConfig {
    // Small segments so rollovers, deletions and re-logging happen; a tiny cache so reads hit disk.
    WalConfig {
        segment_bytes: 64 << 10,
        batch_bytes_max: 56 << 10,
        cache_bytes_max: 4 << 10,
        ..WalConfig::default()
    }
}

/// The segment files in `dir`.
fn segment_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
                .count()
        })
        .unwrap_or(0)
}

fn run_wal_case(ops: Vec<Op>, case: u64) -> Result<(), String> {
    run(move || async move {
        let dir = test_dir(&format!("props-{case}"));
        let mut m = Model::default();
        let mut log = Wal::open(&dir, wal_cfg())
            .await
            .map_err(|e| e.to_string())?;
        for (i, op) in ops.iter().enumerate() {
            if let Op::Reopen = op {
                drop(log); // a crash: the buffered batch is lost
                m.crash();
                let before = segment_files(&dir);
                log = Wal::open(&dir, wal_cfg())
                    .await
                    .map_err(|e| format!("reopen: {e}"))?;
                // An open continues in the last segment: reopening never adds one (it may
                // remove a segment created ahead that never got a record).
                let after = segment_files(&dir);
                if after > before.max(1) || log.stats().segments > before.max(1) {
                    return Err(format!(
                        "op {i}: reopen went from {before} segment files to {after}"
                    ));
                }
            } else {
                step(&log, &mut m, op, i as u64)
                    .await
                    .map_err(|e| format!("op {i} {op:?}: {e}"))?;
            }
            compare(&log, &m.cur, PARTS)
                .await
                .map_err(|e| format!("after op {i} {op:?}: {e}"))?;
        }
        // WAL_PROPS_STATS=1 shows how far each case got (rollovers, deletions) when tuning.
        if std::env::var("WAL_PROPS_STATS").is_ok() {
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            eprintln!(
                "files first={} count={} ops={}",
                names[0],
                names.len(),
                ops.len()
            );
        }
        // Finally: everything synced survives a reopen, and old segments were deleted.
        log.sync().await.map_err(|e| e.to_string())?;
        m.sync();
        drop(log);
        let log = Wal::open(&dir, wal_cfg())
            .await
            .map_err(|e| e.to_string())?;
        compare(&log, &m.cur, PARTS)
            .await
            .map_err(|e| format!("final reopen: {e}"))?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
}

fn run_mem_case(ops: Vec<Op>) -> Result<(), String> {
    common::block_on(async move {
        let mut m = Model::default();
        let log = MemLog::new(FaultConfig::default());
        for (i, op) in ops.iter().enumerate() {
            if let Op::Reopen = op {
                log.crash();
                m.crash();
            } else {
                step(&log, &mut m, op, i as u64)
                    .await
                    .map_err(|e| format!("op {i} {op:?}: {e}"))?;
            }
            compare(&log, &m.cur, PARTS)
                .await
                .map_err(|e| format!("after op {i} {op:?}: {e}"))?;
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn wal_matches_model(ops in proptest::collection::vec(op(), 1..160), case in any::<u64>()) {
        let r = run_wal_case(ops, case);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    #[test]
    fn memlog_matches_model(ops in proptest::collection::vec(op(), 1..120)) {
        let r = run_mem_case(ops);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}
