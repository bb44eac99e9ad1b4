//! Writes a seed corpus for the `recovery` fuzz target (`wal/fuzz`): segment files written by
//! a real [`Wal`] (appends, hard states, a truncation, a compaction, over several small
//! segments), in the target's input format (`wal::fuzzing`), whole and as record regions, clean
//! and with a torn last batch.
//!
//! Usage: `cargo run -p wal --example fuzz_seeds -- wal/fuzz/corpus/recovery`

use bytes::Bytes;
use wal::{Entry, HardState, LogStore, SnapshotPoint, Wal, WalConfig};

/// Block size and first record offset of the format (`wal::format`).
const BLOCK: usize = 4096;

fn entries(first: u64, n: u64, term: u64) -> Vec<Entry> {
    (first..first + n)
        .map(|index| Entry {
            index,
            term,
            kind: (index % 3) as u8,
            data: Bytes::from(format!("cmd-{index}-{term}").repeat(8 + index as usize % 8)),
        })
        .collect()
}

/// Writes a WAL into `dir` and returns its segment files, oldest first.
fn write_wal(dir: std::path::PathBuf) -> Vec<Vec<u8>> {
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create WAL dir");
    let d = dir.clone();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(2 << 20)
        .spawn(move || async move {
            let cfg = WalConfig {
                segment_bytes: 4 * BLOCK as u64,
                batch_bytes_max: 2 * BLOCK as u64,
                prefill_segments: false,
                ..WalConfig::default()
            };
            let log = Wal::open(&d, cfg).await.expect("open");
            let hs = |term, commit| HardState {
                term,
                vote: 2,
                commit,
            };
            log.append(1, &entries(1, 3, 1)).unwrap();
            log.append(2, &entries(1, 2, 1)).unwrap();
            log.put_hard_state(1, hs(1, 0)).unwrap();
            log.sync().await.unwrap();
            log.truncate(1, 3).unwrap();
            log.append(1, &entries(3, 2, 2)).unwrap();
            log.put_hard_state(1, hs(2, 2)).unwrap();
            log.sync().await.unwrap();
            log.compact(1, SnapshotPoint { index: 2, term: 1 }).unwrap();
            log.sync().await.unwrap();
            for round in 0..24u64 {
                let next = log.last_index(2) + 1;
                log.append(2, &entries(next, 4, 2 + round / 8)).unwrap();
                log.put_hard_state(2, hs(2 + round / 8, next)).unwrap();
                log.sync().await.unwrap();
            }
            log.wait_background().await;
        })
        .expect("spawn executor")
        .join()
        .expect("executor thread");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("read WAL dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n != "iopoll-probe"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read(p).expect("read segment"))
        .filter(|b| b.iter().any(|&x| x != 0))
        .collect()
}

/// Drops most trailing zero bytes (recovery reads a short file the same as a zero-filled one),
/// keeping a record header's worth: a record may end in zero fields.
fn trim(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
    &b[..(end.next_multiple_of(8) + 48).min(b.len())]
}

/// One input: mode, flags, then the segments with u16 length prefixes but the last.
fn input(mode: u8, flags: u8, segs: &[&[u8]]) -> Vec<u8> {
    let mut v = vec![mode | (segs.len() as u8 - 1), flags];
    for (i, s) in segs.iter().enumerate() {
        if i + 1 < segs.len() {
            v.extend_from_slice(&(s.len() as u16).to_le_bytes());
        }
        v.extend_from_slice(s);
    }
    v
}

fn main() -> std::io::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "wal/fuzz/corpus/recovery".into());
    std::fs::create_dir_all(&out)?;
    let work =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-seeds-wal");
    let segs = write_wal(work);
    assert!(segs.len() >= 2, "the seed WAL spans several segments");
    let whole: Vec<&[u8]> = segs.iter().map(|s| trim(s)).collect();
    let records: Vec<&[u8]> = whole.iter().map(|s| &s[BLOCK.min(s.len())..]).collect();
    let n = whole.len().min(4);
    let write = |name: &str, bytes: Vec<u8>| std::fs::write(format!("{out}/{name}"), bytes);
    write("whole-1", input(0, 0, &whole[..1]))?;
    write("whole-all", input(0, 0, &whole[..n]))?;
    write("records-1", input(4 | 8, 0, &records[..1]))?;
    write("records-all", input(4 | 8, 0, &records[..n]))?;
    write(
        "records-all-seals-last",
        input(4 | 8, 1 << (n - 1), &records[..n]),
    )?;
    // A torn last write: the last segment's records cut in the middle of its last batch.
    let last = records[n - 1];
    let mut torn: Vec<&[u8]> = records[..n - 1].to_vec();
    torn.push(&last[..last.len().saturating_sub(40) & !7]);
    write("records-torn", input(4 | 8, 0, &torn))?;
    println!("wrote {} seeds to {out}", 6);
    Ok(())
}
