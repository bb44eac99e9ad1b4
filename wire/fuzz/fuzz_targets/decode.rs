//! Fuzz target for frame and body decoding of all three frame kinds. Input format and checks:
//! `wire::fuzzing::check_decode` (shared with the replay test `wire/tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wire::fuzzing::check_decode(data));
