//! Fuzz target for log entry commands (`engine::command::Command::decode`). Input format and checks:
//! `engine::fuzzing::check_command` (shared with the replay test `engine/tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| engine::fuzzing::check_command(data));
