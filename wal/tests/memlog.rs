//! MemLog's fault injection: crashes lose unsynced batches, a batch whose fdatasync failed
//! survives whole or not at all (seeded, reproducible), injected errors poison the log.

mod common;

use common::{block_on, entry};
use wal::{FaultConfig, HardState, LogStore, MemLog, WalError};

fn log_with_one_synced(seed: u64) -> MemLog {
    let log = MemLog::new(FaultConfig {
        seed,
        unsynced_survival_percent: 50,
    });
    log.append(1, &[entry(1, 1, 10, 0)]).unwrap();
    block_on(log.sync()).unwrap();
    log
}

#[test]
fn crash_loses_buffered_ops() {
    let log = log_with_one_synced(0);
    log.append(1, &[entry(2, 1, 10, 0)]).unwrap();
    log.put_hard_state(
        1,
        HardState {
            term: 1,
            vote: 2,
            commit: 1,
        },
    )
    .unwrap();
    assert_eq!(log.last_index(1), 2);
    log.crash();
    assert_eq!(log.last_index(1), 1);
    assert_eq!(log.hard_state(1), None);
}

#[test]
fn failed_fdatasync_is_fatal_and_its_batch_survives_whole_or_not_at_all() {
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..32 {
        let run = || {
            let log = log_with_one_synced(seed);
            log.append(1, &[entry(2, 1, 10, 0), entry(3, 1, 10, 0)])
                .unwrap();
            log.put_hard_state(
                1,
                HardState {
                    term: 1,
                    vote: 2,
                    commit: 1,
                },
            )
            .unwrap();
            log.fail_next_sync();
            let e = block_on(log.sync()).unwrap_err();
            assert!(e.is_fatal(), "{e}");
            assert!(matches!(
                log.append(1, &[entry(4, 1, 1, 0)]),
                Err(WalError::Poisoned(_))
            ));
            log.crash();
            let got = (log.last_index(1), log.hard_state(1).is_some());
            assert!(
                got == (1, false) || got == (3, true),
                "partial batch survived: {got:?}"
            );
            got
        };
        let a = run();
        assert_eq!(a, run(), "seed {seed} is not reproducible");
        outcomes.insert(a);
    }
    assert_eq!(
        outcomes.len(),
        2,
        "both outcomes should occur over 32 seeds: {outcomes:?}"
    );
}

#[test]
fn failed_write_is_not_fatal_loses_the_batch_and_poisons_until_restart() {
    let log = log_with_one_synced(7);
    log.append(1, &[entry(2, 1, 10, 0)]).unwrap();
    log.fail_next_write();
    let e = block_on(log.sync()).unwrap_err();
    assert!(!e.is_fatal() && matches!(e, WalError::Io { .. }), "{e}");
    assert!(matches!(block_on(log.sync()), Err(WalError::Poisoned(_))));
    log.crash();
    assert_eq!(log.last_index(1), 1);
    log.append(1, &[entry(2, 2, 10, 0)]).unwrap();
    let rep = block_on(log.sync()).unwrap();
    assert_eq!((rep.appended[0].first, rep.appended[0].last), (2, 2));
}

#[test]
fn invalid_operations_leave_the_state_unchanged() {
    let log = log_with_one_synced(1);
    assert!(matches!(
        log.append(1, &[entry(5, 1, 1, 0)]),
        Err(WalError::NonContiguous {
            expected: 2,
            got: 5,
            ..
        })
    ));
    assert!(matches!(log.append(1, &[]), Err(WalError::Invalid(_))));
    log.compact(1, wal::SnapshotPoint { index: 1, term: 1 })
        .unwrap();
    assert!(matches!(
        log.truncate(1, 1),
        Err(WalError::Compacted { .. })
    ));
    assert!(matches!(
        block_on(log.entries(1, 1, 2, 100)),
        Err(WalError::Compacted { .. })
    ));
    assert_eq!((log.first_index(1), log.last_index(1)), (2, 1));
}
