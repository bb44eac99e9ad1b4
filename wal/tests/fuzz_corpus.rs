//! Replays the committed fuzz corpus and crash reproducers of `wal/fuzz` through the check the
//! fuzz target runs (`wal::fuzzing::check`), so `cargo test` catches a regression without
//! cargo-fuzz.

use std::path::Path;

fn replay(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for ent in rd {
        let path = ent.expect("dir entry").path();
        let data = std::fs::read(&path).expect("read corpus file");
        let r = std::panic::catch_unwind(|| wal::fuzzing::check(&data));
        assert!(r.is_ok(), "{} fails the fuzz check", path.display());
        n += 1;
    }
    n
}

#[test]
fn committed_fuzz_inputs_pass_the_fuzz_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = replay(&root.join("corpus/recovery"));
    assert!(corpus > 0, "no corpus under {}", root.display());
    replay(&root.join("regressions/recovery"));
}
