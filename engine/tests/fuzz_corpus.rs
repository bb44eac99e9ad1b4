//! Replays the committed fuzz corpora and crash reproducers of `engine/fuzz` through the checks
//! the fuzz targets run (`engine::fuzzing`), so `cargo test` catches a regression without
//! cargo-fuzz.

use std::path::Path;

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

fn replay_target(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = replay(&root.join("corpus").join(target), check);
    assert!(
        corpus > 0,
        "no corpus for {target} under {}",
        root.display()
    );
    replay(&root.join("regressions").join(target), check);
}

#[test]
fn snapshot_corpus_passes_the_fuzz_check() {
    replay_target("snapshot", engine::fuzzing::check_snapshot);
}

#[test]
fn meta_map_corpus_passes_the_fuzz_check() {
    replay_target("meta_map", engine::fuzzing::check_meta_map);
}

#[test]
fn command_corpus_passes_the_fuzz_check() {
    replay_target("command", engine::fuzzing::check_command);
}
