//! Replays the committed fuzz corpus and crash reproducers of `wal/fuzz` through the check the
//! fuzz target runs (`wal::fuzzing::check`), so `cargo test` catches a regression without
//! cargo-fuzz.

mod support;

#[test]
fn committed_fuzz_inputs_pass_the_fuzz_check() {
    support::fuzz_replay::replay_target(
        env!("CARGO_MANIFEST_DIR"),
        "recovery",
        wal::fuzzing::check,
    );
}
