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
