//! Replays a crate's committed fuzz corpora and crash reproducers (`<crate>/fuzz/corpus/<target>`
//! and `<crate>/fuzz/regressions/<target>`) through the check its fuzz target runs, so
//! `cargo test` catches a regression without cargo-fuzz. Shared by the `fuzz_corpus` tests of
//! wal, wire and engine (`#[path]`-included: no crate sits below all three).

use std::path::Path;

/// Runs `check` on every file in `dir` (none if it does not exist); returns how many.
fn replay(dir: &Path, check: fn(&[u8])) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for ent in rd {
        let path = ent.expect("dir entry").path();
        let data = std::fs::read(&path).expect("read corpus file");
        let r = std::panic::catch_unwind(|| check(&data));
        assert!(r.is_ok(), "{} fails the fuzz check", path.display());
        n += 1;
    }
    n
}

/// Replays `target`'s corpus (which must not be empty) and its regressions under
/// `crate_dir/fuzz`.
pub fn replay_target(crate_dir: &str, target: &str, check: fn(&[u8])) {
    let root = Path::new(crate_dir).join("fuzz");
    let corpus = replay(&root.join("corpus").join(target), check);
    assert!(
        corpus > 0,
        "no corpus for {target} under {}",
        root.display()
    );
    replay(&root.join("regressions").join(target), check);
}
