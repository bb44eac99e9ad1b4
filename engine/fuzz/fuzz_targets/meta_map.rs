//! Fuzz target for the stored cluster map (`engine::meta::MetaMap::decode`). Input format and checks:
//! `engine::fuzzing::check_meta_map` (shared with the replay test `engine/tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| engine::fuzzing::check_meta_map(data));
