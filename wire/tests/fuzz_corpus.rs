//! Replays the committed fuzz corpora and crash reproducers of `wire/fuzz` through the checks
//! the fuzz targets run (`wire::fuzzing`), so `cargo test` catches a regression without
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
fn decode_corpus_passes_the_fuzz_check() {
    replay_target("decode", wire::fuzzing::check_decode);
}

#[test]
fn peer_corpus_passes_the_fuzz_check() {
    replay_target("peer", wire::fuzzing::check_peer);
}
