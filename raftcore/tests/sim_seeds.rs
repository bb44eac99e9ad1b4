//! Runs the deterministic simulator over 600 seeds (each with faults, crashes, membership
//! changes and transfers, then a liveness phase and a linearizability check). A failure names
//! the seed and the command that replays it.

use raftcore::sim::{run_seeds, SimConfig};

#[test]
fn simulator_600_seeds_pass() {
    let (passed, failed) = run_seeds(0..600, &SimConfig::default());
    for f in &failed {
        eprintln!("FAIL {f}");
    }
    assert!(
        failed.is_empty(),
        "{} seeds failed, {passed} passed",
        failed.len()
    );
    assert_eq!(passed, 600);
}

#[test]
fn simulator_is_deterministic() {
    let cfg = SimConfig::default();
    let a = raftcore::sim::run(42, &cfg).unwrap();
    let b = raftcore::sim::run(42, &cfg).unwrap();
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert!(a.ops_completed > 50, "clients made progress: {a:?}");
}

/// Seeds that once failed, replayed on every run: 16295 crashed a follower between a snapshot
/// install over its divergent log and the install's sync, while `persisted` still named the
/// snapshot's index (fixed in `RaftLog::restore`; 1 of seeds 2000..40000 failed before the fix).
/// Schedules move with any behavioural change, so this seed may stop reaching that state; the
/// unit test `an_installed_snapshot_is_not_persisted_before_its_ready_is` is the lasting guard.
#[test]
fn simulator_regression_seeds_pass() {
    let (passed, failed) = run_seeds(16295..16296, &SimConfig::default());
    for f in &failed {
        eprintln!("FAIL {f}");
    }
    assert!(failed.is_empty() && passed == 1, "{failed:?}");
}
