//! Fuzz target for peer batch decoding (`wire::decode_peer_batch`). Input format and checks:
//! `wire::fuzzing::check_peer` (shared with the replay test `wire/tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wire::fuzzing::check_peer(data));
