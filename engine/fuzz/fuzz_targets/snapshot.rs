//! Fuzz target for snapshot files (`engine::snapshot::decode` and `decode_meta`). Input format and checks:
//! `engine::fuzzing::check_snapshot` (shared with the replay test `engine/tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| engine::fuzzing::check_snapshot(data));
