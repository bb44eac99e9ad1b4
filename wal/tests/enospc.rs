//! Out of space, on the real kernel path: RLIMIT_FSIZE makes writes past the limit fail (short
//! write, then EFBIG) and `fallocate` of a new segment fail, exactly where ENOSPC would strike
//! (segments are preallocated, so a full disk shows up when a segment is created, or as a failed
//! write). The caller gets a non-fatal error, the log refuses further writes, nothing durable is
//! damaged, and the log reopens once space is back. This file holds one test because the limit
//! is process-wide.

mod common;

use common::{compare, entry, run, test_dir, Model};
use wal::{LogStore, Wal, WalConfig, WalError};

fn set_fsize(limit: u64) {
    let lim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall on a struct we own.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &lim) }, 0);
}

/// Appends two 4000-byte entries per sync to partition 0, keeping `m` in step with what was
/// synced, until a sync fails; returns that error.
async fn write_until_failure(log: &Wal, m: &mut Model) -> WalError {
    loop {
        let next = log.last_index(0) + 1;
        let es: Vec<_> = (next..next + 2).map(|i| entry(i, 1, 4000, 0)).collect();
        log.append(0, &es).unwrap();
        match log.sync().await {
            Ok(_) => {
                for e in es {
                    m.part(0).entries.insert(e.index, e);
                }
                m.sync();
            }
            Err(e) => return e,
        }
    }
}

#[test]
fn write_and_allocation_failures_are_errors_and_the_log_reopens() {
    // SAFETY: ignoring SIGXFSZ so the over-limit write returns EFBIG instead of killing us.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    run(|| async {
        let dir = test_dir("enospc");
        let cfg = WalConfig {
            segment_bytes: 256 << 10,
            batch_bytes_max: 64 << 10,
            cache_bytes_max: 1 << 20,
            ..WalConfig::default()
        };
        let log = Wal::open(&dir, cfg.clone()).await.unwrap();
        let mut m = Model::default();
        let mut next = 1;
        // Fill segment 1 up to ~100 KiB, durably.
        loop {
            let es: Vec<_> = (next..next + 2).map(|i| entry(i, 1, 4000, 0)).collect();
            log.append(0, &es).unwrap();
            for e in es {
                m.part(0).entries.insert(e.index, e);
            }
            next += 2;
            let rep = log.sync().await.unwrap();
            m.sync();
            if rep.end_offset > 100 << 10 {
                break;
            }
        }
        set_fsize(128 << 10);
        // The write that crosses the limit fails (short write or EFBIG): an ordinary I/O error.
        let err = write_until_failure(&log, &mut m).await;
        eprintln!("sync past the limit: {err}");
        assert!(matches!(err, WalError::Io { .. }), "{err}");
        assert!(!err.is_fatal());
        // Refuses further writes until reopened.
        let next = log.last_index(0) + 1;
        assert!(matches!(
            log.append(0, &[entry(next, 1, 1, 0)]),
            Err(WalError::Poisoned(_))
        ));
        drop(log);
        // Reopening while still "full" works (writing continues in segment 1, nothing is
        // created; the cut of the failed write stays below the limit) and recovers exactly
        // what was synced; the log still cannot grow past the limit.
        m.crash();
        let log = Wal::open(&dir, cfg.clone()).await.unwrap();
        compare(&log, &m.cur, 1).await.unwrap();
        assert_eq!(log.stats().segments, 1);
        let err = write_until_failure(&log, &mut m).await;
        assert!(matches!(err, WalError::Io { .. }), "{err}");
        drop(log);
        // Creating a segment past the limit (here: a new WAL's first one) fails, cleanly.
        match Wal::open(test_dir("enospc-new"), cfg.clone()).await {
            Err(WalError::Io { op, .. }) => assert_eq!(op, "fallocate"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("segment creation past RLIMIT_FSIZE succeeded"),
        }
        // Space is back: everything synced before the failure is there, nothing else.
        set_fsize(libc::RLIM_INFINITY);
        let log = Wal::open(&dir, cfg.clone()).await.unwrap();
        m.crash();
        compare(&log, &m.cur, 1).await.unwrap();
        // And the log works again.
        let n = log.last_index(0) + 1;
        log.append(0, &[entry(n, 2, 10, 1)]).unwrap();
        log.sync().await.unwrap();
        drop(log);
        let log = Wal::open(&dir, cfg).await.unwrap();
        assert_eq!(log.last_index(0), n);
    });
}
