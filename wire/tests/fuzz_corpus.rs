//! Replays the committed fuzz corpora and crash reproducers of `wire/fuzz` through the checks
//! the fuzz targets run (`wire::fuzzing`), so `cargo test` catches a regression without
//! cargo-fuzz.

#[path = "../../wal/tests/support/fuzz_replay.rs"]
mod fuzz_replay;

use fuzz_replay::replay_target;

const DIR: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn decode_corpus_passes_the_fuzz_check() {
    replay_target(DIR, "decode", wire::fuzzing::check_decode);
}

#[test]
fn peer_corpus_passes_the_fuzz_check() {
    replay_target(DIR, "peer", wire::fuzzing::check_peer);
}
