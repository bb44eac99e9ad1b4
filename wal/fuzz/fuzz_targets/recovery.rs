//! Fuzz target for WAL record decoding and segment scanning (recovery) from arbitrary bytes.
//! The input format and the checks are in `wal::fuzzing` (shared with the replay test
//! `wal/tests/fuzz_corpus.rs`): a typed error or a recovered log whose invariants hold, never a
//! panic; every record that parses re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wal::fuzzing::check(data));
