//! Helpers shared by wal's integration tests (and, by `#[path]`, other crates' tests).

pub mod fuzz_replay;
