//! Replays the committed fuzz corpora and crash reproducers of `engine/fuzz` through the checks
//! the fuzz targets run (`engine::fuzzing`), so `cargo test` catches a regression without
//! cargo-fuzz.

#[path = "../../wal/tests/support/fuzz_replay.rs"]
mod fuzz_replay;

use fuzz_replay::replay_target;

const DIR: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn snapshot_corpus_passes_the_fuzz_check() {
    replay_target(DIR, "snapshot", engine::fuzzing::check_snapshot);
}

#[test]
fn meta_map_corpus_passes_the_fuzz_check() {
    replay_target(DIR, "meta_map", engine::fuzzing::check_meta_map);
}

#[test]
fn command_corpus_passes_the_fuzz_check() {
    replay_target(DIR, "command", engine::fuzzing::check_command);
}
