//! Snapshot encoding and files: round trip, layout, corruption and truncation detection with
//! offsets, real files.

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use engine::command::{Command, CommandOp, Compare, CompareOp, CompareTarget, Txn, TxnOp};
use engine::snapshot::{self, SnapshotError, SnapshotFileError, HEADER_BYTES};
use engine::state_machine::{Config, RevisionError, StateMachine};
use proptest::prelude::*;

/// The configuration of [`sample_state`]'s partition.
const SAMPLE: Config = Config {
    partition_id: 0x2a,
    sessions_max: 16,
    session_results_max: 4096,
    history_revisions: 3,
    history_bytes_max: 1 << 20,
};

fn sample_state() -> StateMachine {
    let mut sm = StateMachine::new(SAMPLE);
    let mut i = 0;
    let mut apply = |sm: &mut StateMachine, c: Command| {
        i += 1;
        let _ = sm.apply(i, 3, &c);
    };
    apply(&mut sm, Command::put("alpha", "1").with_session(5, 1, 1));
    apply(&mut sm, Command::put("beta", "2"));
    apply(&mut sm, Command::put("alpha", "3").with_session(6, 1, 1));
    apply(
        &mut sm,
        Command {
            session: Some(engine::command::Session {
                client_id: 9,
                sequence: 1,
                first_unacked: 1,
            }),
            op: CommandOp::Txn(Txn {
                compares: vec![Compare {
                    key: Bytes::from_static(b"alpha"),
                    cmp: CompareOp::Equal,
                    target: CompareTarget::Version(2),
                }],
                success: vec![
                    TxnOp::Put {
                        key: Bytes::from_static(b"gamma"),
                        value: Bytes::from_static(b"g"),
                        return_prev: true,
                    },
                    TxnOp::Delete {
                        key: Bytes::from_static(b"beta"),
                        return_prev: true,
                    },
                    TxnOp::Get {
                        key: Bytes::from_static(b"alpha"),
                    },
                ],
                failure: vec![],
            }),
        },
    );
    apply(
        &mut sm,
        Command {
            session: Some(engine::command::Session {
                client_id: 11,
                sequence: 1,
                first_unacked: 0,
            }),
            op: CommandOp::Delete(engine::command::Delete {
                key: Bytes::from_static(b"alpha"),
                return_prev: true,
            }),
        },
    );
    apply(&mut sm, Command::put("delta", vec![0u8; 300]));
    sm
}

#[test]
fn round_trip_and_header_layout() {
    let sm = sample_state();
    assert_eq!(sm.sessions().len(), 4);
    let bytes = snapshot::encode(&sm, b"membership!");
    let snap = snapshot::decode(&bytes, &SAMPLE).unwrap();
    assert_eq!(snap.state, sm);
    assert_eq!(snap.meta.partition_id, 0x2a);
    assert_eq!(snap.meta.applied_index, 6);
    assert_eq!(snap.meta.applied_term, 3);
    assert_eq!(snap.meta.revision, sm.revision());
    assert_eq!(&snap.meta.membership[..], b"membership!");

    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    assert_eq!(&bytes[..8], b"CORUMSNP");
    assert_eq!(u32_at(8), 2);
    assert_eq!(u32_at(12), 0);
    assert_eq!(u64_at(16), 0x2a);
    assert_eq!(u64_at(24), 6);
    assert_eq!(u64_at(32), 3);
    assert_eq!(u64_at(40), sm.revision());
    assert_eq!(u32_at(48), 11);
    let body_len = u64_at(52) as usize;
    assert_eq!(bytes.len(), HEADER_BYTES + 11 + body_len + 4);
    assert_eq!(u32_at(60), crc32c::crc32c(&bytes[..60]));
    assert_eq!(
        u32_at(bytes.len() - 4),
        crc32c::crc32c(&bytes[..bytes.len() - 4])
    );
    assert_eq!(&bytes[64..75], b"membership!");
    assert_eq!(u64_at(75), sm.len() as u64);

    // The header alone is enough to learn the position and the membership.
    let (meta, total) = snapshot::decode_meta(&bytes[..HEADER_BYTES + 11]).unwrap();
    assert_eq!(meta, snap.meta);
    assert_eq!(total, bytes.len() as u64);
    assert!(matches!(
        snapshot::decode_meta(&bytes[..HEADER_BYTES + 5]),
        Err(SnapshotError::Truncated {
            offset: 64,
            needed: 11,
            available: 5,
            ..
        })
    ));

    // Deterministic: the restored state encodes to the same bytes.
    assert_eq!(snapshot::encode(&snap.state, b"membership!"), bytes);
}

#[test]
fn restored_state_continues_like_the_original() {
    let mut a = sample_state();
    let mut b = snapshot::decode(&snapshot::encode(&a, b""), &SAMPLE)
        .unwrap()
        .state;
    // A retry of a session command is answered from the restored cache.
    let retry = Command::put("alpha", "1").with_session(5, 1, 1);
    let ra = a.apply(7, 3, &retry).unwrap();
    let rb = b.apply(7, 3, &retry).unwrap();
    assert_eq!(ra, rb);
    assert_eq!(ra.revision, 1);
    let next = Command::put("zeta", "z");
    assert_eq!(a.apply(8, 4, &next), b.apply(8, 4, &next));
    assert_eq!(a, b);
}

#[test]
fn every_bit_flip_is_detected_with_its_offset() {
    let bytes = snapshot::encode(&sample_state(), b"m").to_vec();
    let len = bytes.len();
    for i in 0..len {
        for bit in 0..8 {
            let mut v = bytes.clone();
            v[i] ^= 1 << bit;
            let err = snapshot::decode(&v, &SAMPLE).expect_err("corruption not detected");
            match err {
                SnapshotError::BadMagic { .. } => assert!(i < 8, "byte {i}"),
                SnapshotError::ChecksumMismatch {
                    region: "header",
                    offset: 60,
                    covered_end: 60,
                    ..
                } => assert!((8..64).contains(&i), "byte {i}"),
                SnapshotError::ChecksumMismatch {
                    region: "file",
                    offset,
                    covered_end,
                    ..
                } => {
                    assert!(i >= 64, "byte {i}");
                    assert_eq!(offset, len - 4);
                    assert_eq!(covered_end, len - 4);
                }
                other => panic!("byte {i} bit {bit}: unexpected {other:?}"),
            }
        }
    }
}

#[test]
fn every_truncation_is_detected() {
    let bytes = snapshot::encode(&sample_state(), b"m").to_vec();
    for cut in 0..bytes.len() {
        match snapshot::decode(&bytes[..cut], &SAMPLE) {
            Err(SnapshotError::Truncated {
                offset: 0,
                needed: 64,
                available,
                ..
            }) => assert_eq!(available, cut),
            Err(SnapshotError::LengthMismatch { declared, actual }) => {
                assert!(cut >= 64);
                assert_eq!(declared, bytes.len() as u64);
                assert_eq!(actual, cut as u64);
            }
            other => panic!("cut at {cut}: unexpected {other:?}"),
        }
    }
    // Bytes appended are caught too.
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        snapshot::decode(&longer, &SAMPLE),
        Err(SnapshotError::LengthMismatch { .. })
    ));
}

/// Recomputes both checksums after an edit, so the body rules themselves are exercised.
fn reseal(v: &mut [u8]) {
    let h = crc32c::crc32c(&v[..60]);
    v[60..64].copy_from_slice(&h.to_le_bytes());
    let n = v.len();
    let f = crc32c::crc32c(&v[..n - 4]);
    v[n - 4..].copy_from_slice(&f.to_le_bytes());
}

#[test]
fn body_rules_are_checked_with_offsets() {
    let mut sm = StateMachine::new(Config::new(1));
    sm.apply(1, 1, &Command::put("a", "x")).unwrap();
    sm.apply(2, 1, &Command::put("b", "y")).unwrap();
    let good = snapshot::encode(&sm, b"").to_vec();
    // body: count u64 at 64; first kv: key len at 72, key "a" at 76, value len at 77, "x" at
    // 81, create at 82, mod at 90, version at 98; second kv key len at 106, key at 110.
    let mut v = good.clone();
    v[98..106].copy_from_slice(&0u64.to_le_bytes());
    reseal(&mut v);
    assert_eq!(
        snapshot::decode(&v, &Config::new(1)),
        Err(SnapshotError::Invalid {
            offset: 98,
            reason: "key version is 0"
        })
    );
    let mut v = good.clone();
    v[110] = b'a'; // second key equal to the first
    reseal(&mut v);
    assert_eq!(
        snapshot::decode(&v, &Config::new(1)),
        Err(SnapshotError::Invalid {
            offset: 106,
            reason: "keys not strictly ascending"
        })
    );
    let mut v = good.clone();
    v[90..98].copy_from_slice(&99u64.to_le_bytes()); // mod revision above the revision
    reseal(&mut v);
    assert!(matches!(
        snapshot::decode(&v, &Config::new(1)),
        Err(SnapshotError::Invalid { offset: 82, .. })
    ));
    let mut v = good.clone();
    v[8] = 3; // version 3, resealed
    reseal(&mut v);
    assert_eq!(
        snapshot::decode(&v, &Config::new(1)),
        Err(SnapshotError::UnsupportedVersion {
            offset: 8,
            version: 3
        })
    );
    let mut v = good.clone();
    v[64..72].copy_from_slice(&u64::MAX.to_le_bytes()); // absurd key count
    reseal(&mut v);
    assert!(matches!(
        snapshot::decode(&v, &Config::new(1)),
        Err(SnapshotError::Truncated { .. })
    ));
}

/// Issue 16, increment 2: the history section (format version 2) round-trips, its rules are
/// checked with offsets, and a version-1 snapshot (no history section) is still read, with
/// only its own revision readable.
#[test]
fn history_section_rules_and_version_1() {
    let config = Config {
        history_revisions: 1000,
        ..Config::new(1)
    };
    let mut sm = StateMachine::new(config);
    sm.apply(1, 1, &Command::put("a", "x")).unwrap();
    sm.apply(2, 1, &Command::put("a", "y")).unwrap();
    assert_eq!(sm.history_len(), 1);
    let good = snapshot::encode(&sm, b"").to_vec();
    let back = snapshot::decode(&good, &config).unwrap().state;
    assert_eq!(back, sm);
    assert_eq!(back.get_at(b"a", 1).unwrap().unwrap().value, "x");
    // The body ends: compacted u64 | key count u64 | key len u32 | "a" | n u32 | value len u32
    // | "x" | create u64 | mod u64 | version u64 | until u64, then the 4-byte file checksum.
    let n = good.len();
    let (until, create, compacted) = (n - 12, n - 36, n - 66);
    assert_eq!(
        u64::from_le_bytes(good[until..until + 8].try_into().unwrap()),
        2
    );
    assert_eq!(
        u64::from_le_bytes(good[create..create + 8].try_into().unwrap()),
        1
    );
    let edited = |at: usize, bytes: &[u8]| {
        let mut v = good.clone();
        v[at..at + bytes.len()].copy_from_slice(bytes);
        reseal(&mut v);
        snapshot::decode(&v, &config)
    };
    assert_eq!(
        edited(until, &3u64.to_le_bytes()),
        Err(SnapshotError::Invalid {
            offset: until,
            reason: "old version not mod revision < until <= snapshot revision"
        })
    );
    assert_eq!(
        edited(until, &1u64.to_le_bytes()),
        Err(SnapshotError::Invalid {
            offset: until,
            reason: "old version not mod revision < until <= snapshot revision"
        })
    );
    assert_eq!(
        edited(compacted, &2u64.to_le_bytes()),
        Err(SnapshotError::Invalid {
            offset: until,
            reason: "old version at or below the compaction point"
        })
    );
    assert_eq!(
        edited(compacted, &3u64.to_le_bytes()),
        Err(SnapshotError::Invalid {
            offset: compacted,
            reason: "compaction point above the snapshot revision"
        })
    );
    // The current "a" was written at 2; an old version ending after that overlaps it (the
    // snapshot revision is 2, so raise it to 3 in the header first).
    let mut v = good.clone();
    v[40..48].copy_from_slice(&3u64.to_le_bytes());
    v[until..until + 8].copy_from_slice(&3u64.to_le_bytes());
    reseal(&mut v);
    assert_eq!(
        snapshot::decode(&v, &config),
        Err(SnapshotError::Invalid {
            offset: n - 50,
            reason: "old version overlaps the key's current version"
        })
    );
    // Version 1: the same state without the history section reads back with the compaction
    // point at its revision: revision 2 readable, revision 1 compacted.
    let history_bytes = n - 4 - compacted;
    let mut v1 = good[..compacted].to_vec();
    v1.extend_from_slice(&[0; 4]);
    v1[8] = 1;
    let body_len = u64::from_le_bytes(v1[52..60].try_into().unwrap()) - history_bytes as u64;
    v1[52..60].copy_from_slice(&body_len.to_le_bytes());
    reseal(&mut v1);
    let old = snapshot::decode(&v1, &config).unwrap().state;
    assert_eq!(old.check_invariants(), Ok(()));
    assert_eq!(old.compacted(), 2);
    assert_eq!(old.history_len(), 0);
    assert_eq!(old.get_at(b"a", 2).unwrap().unwrap().value, "y");
    assert_eq!(
        old.get_at(b"a", 1),
        Err(RevisionError::Compacted {
            requested: 1,
            compacted: 2
        })
    );
}

#[test]
fn session_rules_are_checked_with_offsets() {
    let mut sm = StateMachine::new(Config::new(1));
    // Deletes of missing keys: no key-values, so the session section starts at a known offset.
    sm.apply(1, 1, &Command::delete("a").with_session(7, 3, 2))
        .unwrap();
    sm.apply(2, 1, &Command::delete("b").with_session(7, 5, 2))
        .unwrap();
    let good = snapshot::encode(&sm, b"").to_vec();
    // body: key count at 64, session count at 72; session: client id at 80, first_unacked at
    // 88, last index at 96, result count at 104; cached: sequence at 108, then a 10-byte delete
    // response (revision, kind, flags); the second sequence at 126.
    assert_eq!(u64::from_le_bytes(good[72..80].try_into().unwrap()), 1);
    assert_eq!(u64::from_le_bytes(good[88..96].try_into().unwrap()), 2);
    assert_eq!(u32::from_le_bytes(good[104..108].try_into().unwrap()), 2);
    assert_eq!(u64::from_le_bytes(good[108..116].try_into().unwrap()), 3);
    assert_eq!(u64::from_le_bytes(good[126..134].try_into().unwrap()), 5);
    let edited = |at: usize, bytes: &[u8]| {
        let mut v = good.clone();
        v[at..at + bytes.len()].copy_from_slice(bytes);
        reseal(&mut v);
        snapshot::decode(&v, &Config::new(1))
    };
    assert_eq!(
        edited(126, &3u64.to_le_bytes()),
        Err(SnapshotError::Invalid {
            offset: 126,
            reason: "cached result sequences not strictly ascending"
        })
    );
    assert_eq!(
        edited(88, &4u64.to_le_bytes()),
        Err(SnapshotError::Invalid {
            offset: 108,
            reason: "cached result sequence 0 or below the session's first_unacked"
        })
    );
    assert!(matches!(
        edited(108, &0u64.to_le_bytes()),
        Err(SnapshotError::Invalid { offset: 108, .. })
    ));
    assert!(matches!(
        edited(104, &u32::MAX.to_le_bytes()),
        Err(SnapshotError::Truncated { .. })
    ));
    assert!(matches!(
        edited(72, &u64::MAX.to_le_bytes()),
        Err(SnapshotError::Truncated { .. })
    ));
    assert!(matches!(
        edited(96, &9u64.to_le_bytes()),
        Err(SnapshotError::Invalid { offset: 96, .. })
    ));
    // A snapshot restored into another partition is refused.
    assert_eq!(
        snapshot::decode(&good, &Config::new(2)),
        Err(SnapshotError::WrongPartition {
            expected: 2,
            found: 1
        })
    );
}

#[test]
fn sessions_with_many_cached_results_round_trip() {
    let config = Config {
        partition_id: 5,
        sessions_max: 64,
        session_results_max: 4096,
        history_revisions: 0,
        history_bytes_max: 0,
    };
    let mut sm = StateMachine::new(config);
    let mut index = 0;
    // Client 1 pipelines 3000 writes, arriving out of order (odd sequences first, then the
    // even ones), with nothing acknowledged; clients 2..=20 a few each, some acknowledged.
    let mut expected = Vec::new();
    for seq in (1..=3000u64)
        .filter(|s| s % 2 == 1)
        .chain((1..=3000).filter(|s| s % 2 == 0))
    {
        index += 1;
        let cmd = Command {
            session: Some(engine::command::Session {
                client_id: 1,
                sequence: seq,
                first_unacked: 1,
            }),
            op: CommandOp::Put(engine::command::Put {
                key: Bytes::from(format!("k{}", seq % 50)),
                value: Bytes::from(seq.to_string()),
                if_absent: false,
                return_prev: true,
            }),
        };
        expected.push((cmd.clone(), sm.apply(index, 1, &cmd).unwrap()));
    }
    for client in 2..=20u64 {
        for seq in 1..=10u64 {
            index += 1;
            let cmd = Command::put(format!("c{client}"), "v").with_session(client, seq, seq / 2);
            sm.apply(index, 2, &cmd).unwrap();
        }
    }
    sm.check_invariants().unwrap();
    assert_eq!(sm.sessions().get(1).unwrap().results().len(), 3000);
    assert_eq!(sm.sessions().get(7).unwrap().results().len(), 6); // 5..=10

    let bytes = snapshot::encode(&sm, b"m");
    let mut restored = snapshot::decode(&bytes, &config).unwrap().state;
    assert_eq!(restored, sm);
    restored.check_invariants().unwrap();
    assert_eq!(snapshot::encode(&restored, b"m"), bytes);

    // Every retry is answered from the restored cache with the original result.
    let revision = restored.revision();
    for (cmd, result) in &expected {
        index += 1;
        assert_eq!(restored.apply(index, 3, cmd).as_ref(), Ok(result));
    }
    assert_eq!(restored.revision(), revision);
    // And the restored machine goes on exactly like the original.
    for cmd in [
        Command::put("x", "1").with_session(7, 4, 4),
        Command::put("x", "2").with_session(7, 11, 11),
        Command::put("x", "3").with_session(99, 1, 1),
    ] {
        index += 1;
        assert_eq!(sm.apply(index, 3, &cmd), restored.apply(index, 3, &cmd));
    }
    // (The retries above also moved client 1's last index in `restored` only.)
    assert_eq!(sm.revision(), restored.revision());
    assert_eq!(
        sm.iter().collect::<Vec<_>>(),
        restored.iter().collect::<Vec<_>>()
    );
}

fn test_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn files_round_trip_and_corruption_names_file_and_offset() {
    let dir = test_dir("snapshot-files");
    let sm = sample_state();
    let path = snapshot::write_state(&dir, &sm, b"conf").unwrap();
    assert_eq!(
        path.file_name().unwrap().to_str().unwrap(),
        "snap-000000000000002a-0000000000000006-0000000000000003.corumsnap"
    );
    // Only the final file is left: the temporary one was renamed.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1);
    let snap = snapshot::read_file(&path, &SAMPLE).unwrap();
    assert_eq!(snap.state, sm);
    assert_eq!(&snap.meta.membership[..], b"conf");

    // Overwriting under the same name replaces the file atomically.
    let again = snapshot::write_file(
        &dir,
        path.file_name().unwrap().to_str().unwrap(),
        &snapshot::encode(&sm, b"conf2"),
    )
    .unwrap();
    assert_eq!(again, path);
    assert_eq!(
        &snapshot::read_file(&path, &SAMPLE).unwrap().meta.membership[..],
        b"conf2"
    );

    // Flip a byte on disk.
    let mut data = std::fs::read(&path).unwrap();
    data[200] ^= 0x40;
    std::fs::write(&path, &data).unwrap();
    match snapshot::read_file(&path, &SAMPLE) {
        Err(e @ SnapshotFileError::Corrupt { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(path.to_str().unwrap()), "{msg}");
            let SnapshotFileError::Corrupt { source, .. } = e else {
                unreachable!()
            };
            assert!(
                matches!(source, SnapshotError::ChecksumMismatch { region: "file", offset, .. }
                    if offset == data.len() - 4),
                "unexpected {source:?}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // Names parse back; stale temp files (a crash mid-write) are removed, snapshots kept.
    assert_eq!(
        snapshot::parse_file_name(path.file_name().unwrap().to_str().unwrap()),
        Some((0x2a, 6, 3))
    );
    assert_eq!(snapshot::parse_file_name("snap-1-2-3.corumsnap"), None);
    assert_eq!(
        snapshot::parse_file_name(&snapshot::file_name(u64::MAX, 0, 7)),
        Some((u64::MAX, 0, 7))
    );
    std::fs::write(dir.join(".snap-x.corumsnap.tmp"), b"partial").unwrap();
    assert_eq!(snapshot::remove_stale_temp_files(&dir).unwrap(), 1);
    assert!(path.exists());
    assert!(!dir.join(".snap-x.corumsnap.tmp").exists());

    // A missing file is an I/O error naming the path.
    let missing = dir.join("nope.corumsnap");
    match snapshot::read_file(&missing, &SAMPLE) {
        Err(SnapshotFileError::Io { path, op, .. }) => {
            assert_eq!(path, missing);
            assert_eq!(op, "read");
        }
        other => panic!("expected Io, got {other:?}"),
    }
    // Writing into a missing directory fails with an I/O error, not a panic.
    assert!(matches!(
        snapshot::write_file(&dir.join("no-such-dir"), "x", b"data"),
        Err(SnapshotFileError::Io { op: "create", .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(256)))]

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..200)) {
        prop_assert!(snapshot::decode(&data, &Config::new(1)).is_err() || data.len() >= 68);
        let _ = snapshot::decode_meta(&data);
    }

    /// Random states round-trip; mutated and resealed encodings give a value or a typed error,
    /// never a panic, and an accepted one re-encodes to the same bytes.
    #[test]
    fn random_states_round_trip_and_mutations_never_panic(
        log in common::log(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        seal in any::<bool>(),
    ) {
        let config = Config { partition_id: 3, sessions_max: 3, session_results_max: 4, history_revisions: 2, history_bytes_max: 1 << 20 };
        let mut sm = StateMachine::new(config);
        for (index, term, e) in &log {
            match e {
                common::Entry::Command(c) => { let _ = sm.apply(*index, *term, c); }
                _ => sm.advance_applied(*index, *term).unwrap(),
            }
        }
        let bytes = snapshot::encode(&sm, b"blob");
        let snap = snapshot::decode(&bytes, &config).unwrap();
        prop_assert_eq!(&snap.state, &sm);

        let mut v = bytes.to_vec();
        for (at, b) in edits {
            let i = at.index(v.len());
            v[i] = b;
        }
        if seal && v.len() >= 68 {
            reseal(&mut v);
        }
        let _ = snapshot::decode_meta(&v);
        if let Ok(s) = snapshot::decode(&v, &config) {
            prop_assert_eq!(&snapshot::encode(&s.state, &s.meta.membership)[..], &v[..]);
        }
    }
}
